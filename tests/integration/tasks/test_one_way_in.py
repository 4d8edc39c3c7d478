"""Every way a run enters goes through `platform.submission.Submissions.submit`, with the policy
its caller documents for a broker that says no: a caller's own request is refused (503, and
nothing of it stays in the ledger), a run the platform starts on its own behalf is kept for
beat's outbox (the action that asked for it succeeds).

The gateway runs in process on a database of this test alone (fair share on, a cap of 1), and
its broker is an in-memory one that refuses while told to (tests.fakes.broker)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.db.models import KnowledgeDocument, TaskRun
from switchyard.domains import load_task_modules
from switchyard.platform.beat import Beat
from switchyard.platform.runs import ledger
from switchyard.platform.submission import OnRefusal, Submissions
from switchyard.services.container import Services
from switchyard.settings import Settings
from tests.fakes.broker import InMemoryBroker
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import insert_dead_letter, register_due_schedule

CAP = 1
ECHO = {"task": "system.echo", "payload": {"message": "in"}}


@dataclass(frozen=True)
class Entry:
    """One call of the entry, as its caller made it."""

    tasks: tuple[str, ...]
    on_refusal: OnRefusal
    within: bool  # in the caller's unit of work
    outside_share: bool


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> list[Entry]:
    """Every call of `Submissions.submit` in this test, whoever made it."""
    calls: list[Entry] = []
    submit = Submissions.submit

    async def recorded(
        self: Submissions,
        runs: Sequence[ledger.Stored],
        *,
        on_refusal: OnRefusal,
        within: AsyncSession | None = None,
        outside_share: bool = False,
    ) -> Any:
        tasks = tuple(run.task for run in runs)
        calls.append(Entry(tasks, on_refusal, within is not None, outside_share))
        return await submit(
            self, runs, on_refusal=on_refusal, within=within, outside_share=outside_share
        )

    monkeypatch.setattr(Submissions, "submit", recorded)
    return calls


@pytest.fixture
def settings(
    make_settings: SettingsFactory, own_database: URL, own_broker: str, tmp_path: Path
) -> Settings:
    return make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=own_broker,  # the gateway needs one; its publishes go in memory
        fair_share=True,
        tenant_max_runs_in_flight=CAP,
        smtp_host="127.0.0.1",  # account email is queued (no worker sends it here)
        smtp_tls="none",
        var_dir=tmp_path,
    )


@pytest.fixture
async def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
async def app(settings: Settings, broker: InMemoryBroker) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with running(app) as client:
        submissions = app.state.gateway.submissions
        assert isinstance(submissions, Submissions)
        submissions.broker = broker
        app.state.client = client
        yield app


@pytest.fixture
def client(app: FastAPI) -> httpx.AsyncClient:
    return app.state.client  # type: ignore[no-any-return]


@pytest.fixture
async def account(client: httpx.AsyncClient) -> Account:
    return await sign_up(client)


async def runs_of(engine: AsyncEngine, tenant_id: uuid.UUID, task: str) -> list[TaskRun]:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        rows = await session.scalars(
            select(TaskRun).where(TaskRun.tenant_id == tenant_id, TaskRun.task == task)
        )
        return list(rows)


def refused_problem(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"]
    assert "broker" in response.json()["detail"]


async def test_a_single_run_and_a_definitions_run_are_refused_whole(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
) -> None:
    registered = await client.post(
        "/api/v1/tasks/register",
        json={"name": "greet", "task": "system.echo", "payload": {"message": "hi"}},
        headers=account.headers,
    )
    assert registered.status_code == 201, registered.text
    broker.refusing = True
    refused_problem(await client.post("/api/v1/tasks/run", json=ECHO, headers=account.headers))
    by_name = {"definition": "greet"}
    refused_problem(await client.post("/api/v1/tasks/run", json=by_name, headers=account.headers))
    assert await runs_of(own_engine, account.tenant_id, "system.echo") == []
    assert entries == [Entry(("system.echo",), OnRefusal.REFUSE, False, False)] * 2

    broker.refusing = False
    ran = await client.post("/api/v1/tasks/run", json=by_name, headers=account.headers)
    assert ran.status_code == 202, ran.text
    assert broker.run_ids() == [ran.json()["task_id"]]


async def test_a_bulk_keeps_only_what_the_broker_confirmed_or_what_waits(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
) -> None:
    """The run admitted at once (the cap is 1) is refused and removed; the two waiting for
    the tenant's share are accepted: nothing of theirs was sent yet (207)."""
    broker.refusing = True
    bulk = await client.post(
        "/api/v1/tasks/runs", json={"runs": [ECHO, ECHO, ECHO]}, headers=account.headers
    )
    assert bulk.status_code == 207, bulk.text
    answers = bulk.json()["runs"]
    assert [answer["accepted"] for answer in answers] == [False, True, True]
    assert {answer["state_detail"] for answer in answers[1:]} == {"waiting_for_capacity"}
    stored = await runs_of(own_engine, account.tenant_id, "system.echo")
    assert sorted(str(run.id) for run in stored) == sorted(a["task_id"] for a in answers[1:])
    assert all(run.admitted_at is None and run.published_at is None for run in stored)
    assert entries == [Entry(("system.echo",) * 3, OnRefusal.REFUSE, False, False)]

    everything = await client.post(
        "/api/v1/tasks/runs", json={"runs": [ECHO]}, headers=account.headers
    )
    assert everything.status_code == 202  # waits: the free slot went to the oldest waiting
    oldest = {
        str(run.id): run for run in await runs_of(own_engine, account.tenant_id, "system.echo")
    }[answers[1]["task_id"]]
    # ...whose publish the broker refused too: admitted and kept for the outbox.
    assert (oldest.admitted_at is not None, oldest.published_at) == (True, None)
    assert broker.run_ids() == []


async def test_a_replay_the_broker_refuses_can_be_asked_again(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
) -> None:
    letter = await insert_dead_letter(own_engine, account.tenant_id)
    path = f"/api/v1/tasks/dead-letters/{letter.id}/replay"
    broker.refusing = True
    refused_problem(await client.post(path, headers=account.headers))
    replays = await runs_of(own_engine, account.tenant_id, "system.echo")
    assert [run.id for run in replays if run.replay_of is not None] == []
    assert entries == [Entry(("system.echo",), OnRefusal.REFUSE, True, False)]

    broker.refusing = False
    again = await client.post(path, headers=account.headers)
    assert again.status_code == 202, again.text
    assert broker.run_ids() == [again.json()["task_id"]]


async def test_an_upload_whose_ingestion_run_is_refused_is_not_kept(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
) -> None:
    broker.refusing = True
    upload = await client.post(
        "/api/v1/documents",
        files={"file": ("notes.txt", b"some notes", "text/plain")},
        headers=account.headers,
    )
    refused_problem(upload)
    assert await runs_of(own_engine, account.tenant_id, "documents.ingest") == []
    async with own_engine.connect() as connection:
        documents = await connection.scalar(
            select(func.count())
            .select_from(KnowledgeDocument)
            .where(KnowledgeDocument.tenant_id == account.tenant_id)
        )
    assert documents == 0  # the document goes with its run
    assert entries == [Entry(("documents.ingest",), OnRefusal.REFUSE, True, False)]


async def test_a_data_source_test_the_broker_refuses_is_503(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
) -> None:
    source = await client.post(
        "/api/v1/data-sources",
        json={"name": "warehouse", "url": "postgresql://bi@db.example.com/bi"},
        headers=account.headers,
    )
    assert source.status_code == 201, source.text
    broker.refusing = True
    refused_problem(
        await client.post(
            f"/api/v1/data-sources/{source.json()['id']}/test", headers=account.headers
        )
    )
    assert await runs_of(own_engine, account.tenant_id, "datasources.test_connection") == []
    assert entries == [Entry(("datasources.test_connection",), OnRefusal.REFUSE, True, False)]


async def test_an_account_email_at_the_tenants_cap_is_kept_for_the_outbox(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
) -> None:
    """The invitation succeeds although the broker refuses and the tenant's share is full:
    its email is admitted outside the share and left, unpublished, to beat's outbox."""
    full = await client.post("/api/v1/tasks/run", json=ECHO, headers=account.headers)
    waiting = await client.post("/api/v1/tasks/run", json=ECHO, headers=account.headers)
    assert waiting.json()["state_detail"] == "waiting_for_capacity"
    broker.refusing = True
    invited = await client.post(
        "/api/v1/invitations",
        json={"email": f"invited-{uuid.uuid4().hex[:6]}@example.com", "role": "member"},
        headers=account.headers,
    )
    assert invited.status_code == 201, invited.text
    (email,) = await runs_of(own_engine, account.tenant_id, "accounts.send_email")
    assert email.admitted_at is not None
    assert email.published_at is None
    assert entries[-1] == Entry(("accounts.send_email",), OnRefusal.KEEP, True, True)
    assert broker.run_ids() == [full.json()["task_id"]]  # the waiting run still waits


async def test_a_scheduled_tick_the_broker_refuses_is_claimed_and_kept(
    account: Account,
    client: httpx.AsyncClient,
    broker: InMemoryBroker,
    entries: list[Entry],
    own_engine: AsyncEngine,
    settings: Settings,
) -> None:
    """Beat claims the tick with its run whatever the broker says; its outbox publishes the
    run once the broker is back."""
    await register_due_schedule(client, account, own_engine)
    services = Services.create(settings, "beat")
    try:
        beat = Beat(services, broker, load_task_modules(), Path("beat.heartbeat"))
        broker.refusing = True
        assert await beat.publish_due(datetime.now(UTC)) == 1
        assert await beat.publish_due(datetime.now(UTC)) == 0  # the tick is claimed
        (run,) = await runs_of(own_engine, account.tenant_id, "system.echo")
        assert (run.submitted_by, run.published_at) == ("beat", None)
        assert run.admitted_at is not None  # the tenant's share had room
        assert entries[-1] == Entry(("system.echo",), OnRefusal.KEEP, True, False)

        broker.refusing = False
        assert await beat.republish_stale(datetime.now(UTC) + timedelta(hours=1)) == 1
        assert broker.run_ids() == [str(run.id)]
        await beat.marks.close()
    finally:
        await services.close()
    (published,) = await runs_of(own_engine, account.tenant_id, "system.echo")
    assert published.published_at is not None


async def test_a_delayed_run_is_published_unadmitted_and_a_waiting_one_not_at_all(
    client: httpx.AsyncClient,
    account: Account,
    broker: InMemoryBroker,
    own_engine: AsyncEngine,
) -> None:
    """Fair share treats every caller alike: past the cap a run waits unpublished; a delayed
    run goes to the broker's delay queues at once and is admitted when it comes due."""
    first = await client.post("/api/v1/tasks/run", json=ECHO, headers=account.headers)
    waiting = await client.post("/api/v1/tasks/run", json=ECHO, headers=account.headers)
    delayed = await client.post(
        "/api/v1/tasks/run", json={**ECHO, "countdown": 60}, headers=account.headers
    )
    assert [r.status_code for r in (first, waiting, delayed)] == [202, 202, 202]
    assert broker.run_ids() == [first.json()["task_id"], delayed.json()["task_id"]]
    runs = {str(run.id): run for run in await runs_of(own_engine, account.tenant_id, "system.echo")}
    assert runs[waiting.json()["task_id"]].admitted_at is None
    assert runs[delayed.json()["task_id"]].admitted_at is None
    assert [message.eta is not None for message in broker.messages[-2:]] == [False, True]
