"""Fair share in the ledger and the dispatcher, with no worker: the gateway in process on a
broker of this test alone, so what reaches a work queue stays there to be counted.

A tenant's runs past its cap wait `queued` (waiting_for_capacity), unpublished; another
tenant's runs are admitted at once; a final run admits its tenant's next oldest; every entry
(REST runs, beat's scheduled runs, uploads' ingestion runs, replays) waits the same way; the
superuser sets one tenant's cap; concurrent submissions never pass it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.db.models import RunState, TaskRun
from switchyard.domains import load_task_modules
from switchyard.platform.beat import Beat
from switchyard.platform.broker import Broker
from switchyard.platform.publisher import RunMessage
from switchyard.platform.runs.admission import Dispatcher
from switchyard.services.container import Services
from switchyard.settings import Settings
from tests.fixtures.accounts import Account, sign_up, superuser_headers
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.messaging import ready_messages
from tests.fixtures.tasks import DELIVERY_LIMIT, insert_dead_letter, register_due_schedule

CAP = 2
SLEEP = {"task": "system.sleep", "payload": {"seconds": 1}}
SUPERUSER_PASSWORD = "fair-share-superuser-pw-1"


@pytest.fixture
def engine(own_engine: AsyncEngine) -> AsyncEngine:
    """This test's own database: the session's workers sweep the session's database for
    waiting runs (with the default cap, not this test's) and would admit these."""
    return own_engine


@pytest.fixture
def settings(
    make_settings: SettingsFactory, own_broker: str, own_database: URL, tmp_path: Path
) -> Settings:
    return make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        fair_share=True,
        tenant_max_runs_in_flight=CAP,
        var_dir=tmp_path,
        first_superuser_email=f"root-{uuid.uuid4().hex[:6]}@example.com",
        first_superuser_password=SUPERUSER_PASSWORD,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with running(app) as client:
        app.state.client = client
        yield app


@pytest.fixture
def client(app: FastAPI) -> httpx.AsyncClient:
    return app.state.client  # type: ignore[no-any-return]


async def run(client: httpx.AsyncClient, account: Account, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/api/v1/tasks/run", json=body, headers=account.headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def ledger_rows(engine: AsyncEngine, tenant_id: uuid.UUID) -> list[Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(TaskRun.id, TaskRun.state, TaskRun.admitted_at, TaskRun.published_at)
            .where(TaskRun.tenant_id == tenant_id)
            .order_by(TaskRun.created_at)
        )
        return list(rows)


async def wait_published(engine: AsyncEngine, run_id: uuid.UUID, within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with engine.connect() as connection:
            published = await connection.scalar(
                select(TaskRun.published_at).where(TaskRun.id == run_id)
            )
        if published is not None:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{run_id} never published"
        await asyncio.sleep(0.05)


async def test_runs_past_the_cap_wait_unpublished_and_say_why(
    client: httpx.AsyncClient, engine: AsyncEngine, own_broker: str
) -> None:
    a, b = await sign_up(client), await sign_up(client)
    answers = [await run(client, a, SLEEP) for _ in range(CAP + 3)]
    assert [answer["state_detail"] for answer in answers] == [None] * CAP + [
        "waiting_for_capacity"
    ] * 3
    assert {answer["state"] for answer in answers} == {"queued"}
    waiting = await client.get(f"/api/v1/tasks/{answers[-1]['task_id']}", headers=a.headers)
    assert waiting.json()["state_detail"] == "waiting_for_capacity"
    rows = await ledger_rows(engine, a.tenant_id)
    for row in rows[:CAP]:
        await wait_published(engine, row.id)
    assert [row.admitted_at is not None for row in rows] == [True] * CAP + [False] * 3
    assert all(row.published_at is None for row in rows[CAP:])  # never sent to the broker
    assert await ready_messages(own_broker, "default", CAP) == CAP

    listed = (await client.get("/api/v1/tasks/", headers=a.headers)).json()
    assert listed["share"] == {
        "limit": CAP,
        "in_flight": CAP,
        "started": 0,
        "waiting_for_capacity": 3,
    }
    # Another tenant is not behind the first one's backlog: admitted and published at once.
    other = await run(client, b, SLEEP)
    assert other["state_detail"] is None
    await wait_published(engine, uuid.UUID(other["task_id"]))
    assert await ready_messages(own_broker, "default", CAP + 1) == CAP + 1
    assert (await client.get("/api/v1/tasks/", headers=b.headers)).json()["share"][
        "waiting_for_capacity"
    ] == 0


async def test_a_run_that_ends_admits_its_tenants_next_oldest(
    client: httpx.AsyncClient, engine: AsyncEngine, own_broker: str
) -> None:
    a = await sign_up(client)
    ids = [(await run(client, a, SLEEP))["task_id"] for _ in range(CAP + 2)]
    cancelled = await client.post(f"/api/v1/tasks/{ids[0]}/cancel", headers=a.headers)
    assert cancelled.status_code == 200, cancelled.text
    await wait_published(engine, uuid.UUID(ids[CAP]))  # the oldest waiting one
    rows = {str(row.id): row for row in await ledger_rows(engine, a.tenant_id)}
    assert rows[ids[CAP]].admitted_at is not None
    assert rows[ids[CAP + 1]].admitted_at is None  # still waiting: the cap is full again
    # Cancelling a waiting run frees nothing and publishes nothing.
    await client.post(f"/api/v1/tasks/{ids[CAP + 1]}/cancel", headers=a.headers)
    # The cancelled run's message stays (skipped when delivered); no new one.
    assert await ready_messages(own_broker, "default", CAP + 1) == CAP + 1


async def test_every_entry_waits_for_its_tenants_share(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    a = await sign_up(client)
    for _ in range(CAP):
        await run(client, a, SLEEP)

    upload = await client.post(
        "/api/v1/documents",
        files={"file": ("notes.txt", b"some notes", "text/plain")},
        headers=a.headers,
    )
    assert upload.status_code == 202, upload.text

    letter = await insert_dead_letter(engine, a.tenant_id)
    replay = await client.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay", headers=a.headers)
    assert replay.status_code == 202, replay.text
    assert replay.json()["state_detail"] == "waiting_for_capacity"

    await register_due_schedule(client, a, engine)
    services = Services.create(settings, "beat")
    broker = Broker.create(settings)
    assert broker is not None
    try:
        beat = Beat(services, broker.publisher, load_task_modules(), Path("beat.heartbeat"))
        assert await beat.publish_due(datetime.now(UTC)) >= 1  # other tests' are due too
    finally:
        await services.close()
        broker.close()

    async with engine.connect() as connection:
        rows = await connection.execute(
            select(TaskRun.task, TaskRun.submitted_by, TaskRun.admitted_at, TaskRun.published_at)
            .where(TaskRun.tenant_id == a.tenant_id, TaskRun.state == RunState.QUEUED)
            .order_by(TaskRun.created_at)
        )
        waiting = [(row.task, row.submitted_by) for row in rows if row.admitted_at is None]
    assert [task for task, _ in waiting] == ["documents.ingest", "system.echo", "system.echo"]
    assert waiting[-1][1] == "beat"


async def test_the_superuser_sets_one_tenants_cap(
    app: FastAPI,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    root = await superuser_headers(client, engine, settings)
    a = await sign_up(client)
    ids = [(await run(client, a, SLEEP))["task_id"] for _ in range(CAP + 2)]

    refused = await client.patch(
        f"/api/v1/tenants/{a.tenant_id}", json={"max_runs_in_flight": 5}, headers=a.headers
    )
    assert refused.status_code == 403
    invalid = await client.patch(
        f"/api/v1/tenants/{a.tenant_id}", json={"max_runs_in_flight": 0}, headers=root
    )
    assert invalid.status_code == 422
    assert [error["field"] for error in invalid.json()["errors"]] == ["body.max_runs_in_flight"]

    raised = await client.patch(
        f"/api/v1/tenants/{a.tenant_id}", json={"max_runs_in_flight": CAP + 1}, headers=root
    )
    assert raised.status_code == 200, raised.text
    assert raised.json()["max_runs_in_flight"] == CAP + 1
    await wait_published(engine, uuid.UUID(ids[CAP]))  # admitted at once
    share = (await client.get("/api/v1/tasks/", headers=a.headers)).json()["share"]
    assert share == {
        "limit": CAP + 1,
        "in_flight": CAP + 1,
        "started": 0,
        "waiting_for_capacity": 1,
    }

    reset = await client.patch(
        f"/api/v1/tenants/{a.tenant_id}", json={"max_runs_in_flight": None}, headers=root
    )
    assert reset.json()["max_runs_in_flight"] is None
    share = (await client.get("/api/v1/tasks/", headers=a.headers)).json()["share"]
    assert share["limit"] == CAP


async def test_a_plans_runs_in_flight_caps_its_tenants_share(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    root = await superuser_headers(client, engine, settings)
    plan = f"single-{uuid.uuid4().hex[:6]}"
    made = await client.post(
        "/api/v1/plans", json={"name": plan, "runs_in_flight": 1}, headers=root
    )
    assert made.status_code == 201, made.text
    a = await sign_up(client)
    on_it = await client.patch(f"/api/v1/tenants/{a.tenant_id}", json={"plan": plan}, headers=root)
    assert on_it.status_code == 200, on_it.text

    answers = [await run(client, a, SLEEP) for _ in range(3)]
    assert [answer["state_detail"] for answer in answers] == [None] + ["waiting_for_capacity"] * 2
    share = (await client.get("/api/v1/tasks/", headers=a.headers)).json()["share"]
    assert (share["limit"], share["in_flight"]) == (1, 1)

    # Its own value of the limit goes first: raised, its waiting runs are admitted at once.
    raised = await client.patch(
        f"/api/v1/tenants/{a.tenant_id}",
        json={"limit_overrides": {"runs_in_flight": 3}},
        headers=root,
    )
    assert raised.status_code == 200, raised.text
    await wait_published(engine, uuid.UUID(answers[-1]["task_id"]))
    share = (await client.get("/api/v1/tasks/", headers=a.headers)).json()["share"]
    assert (share["limit"], share["in_flight"], share["waiting_for_capacity"]) == (3, 3, 0)


async def test_concurrent_submissions_never_pass_the_cap(
    client: httpx.AsyncClient, engine: AsyncEngine, own_broker: str
) -> None:
    a = await sign_up(client)
    answers = await asyncio.gather(*(run(client, a, SLEEP) for _ in range(20)))
    admitted = [answer for answer in answers if answer["state_detail"] is None]
    assert len(admitted) == CAP
    rows = await ledger_rows(engine, a.tenant_id)
    assert sum(row.admitted_at is not None for row in rows) == CAP
    for row in rows:
        if row.admitted_at is not None:
            await wait_published(engine, row.id)
    assert await ready_messages(own_broker, "default", CAP) == CAP


async def test_the_sweep_admits_round_robin_across_tenants(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, own_broker: str
) -> None:
    """Slots freed with no admission after them (a worker killed in between): beat's sweep
    gives them out, one tenant after the other."""
    a, b = await sign_up(client), await sign_up(client)
    for account in (a, b):
        for _ in range(CAP + 2):
            await run(client, account, SLEEP)
    async with async_sessionmaker(engine).begin() as session:  # both tenants' runs end
        await session.execute(
            update(TaskRun)
            .where(
                TaskRun.tenant_id.in_([a.tenant_id, b.tenant_id]),
                TaskRun.admitted_at.is_not(None),
            )
            .values(state=RunState.SUCCEEDED)
        )
    dispatcher: Dispatcher = app.state.gateway.dispatcher
    published: list[str] = []
    original = dispatcher.publisher.publish_many

    async def recording(messages: Sequence[RunMessage]) -> list[bool]:
        published.extend(message.run_id for message in messages)
        return await original(messages)

    dispatcher.publisher.publish_many = recording  # type: ignore[method-assign]
    try:
        assert await dispatcher.sweep() == 2 * CAP
    finally:
        dispatcher.publisher.publish_many = original  # type: ignore[method-assign]
    owners = {
        str(row.id): tenant
        for tenant in (a, b)
        for row in await ledger_rows(engine, tenant.tenant_id)
    }
    order = [owners[run_id].tenant_id for run_id in published]
    # Alternating, not one tenant's runs first:
    assert [order[i] != order[i + 1] for i in range(len(order) - 1)] == [True] * (len(order) - 1)
    assert sorted(order) == sorted([a.tenant_id, b.tenant_id] * CAP)


async def test_an_account_email_is_outside_the_tenants_share(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Platform-started runs (account email, platform.outbox) are admitted as they are
    recorded, whatever the tenant's share: an invitation is not sent after a backlog."""
    # Account email is queued, not sent: no worker runs here.
    with_email = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_tls": "none"})
    async with running(create_app(with_email)) as client:
        a = await sign_up(client)
        for _ in range(CAP + 2):
            await run(client, a, SLEEP)
        invited = await client.post(
            "/api/v1/invitations",
            json={"email": f"invited-{uuid.uuid4().hex[:6]}@example.com", "role": "member"},
            headers=a.headers,
        )
    assert invited.status_code in (200, 201, 202), invited.text
    async with engine.connect() as connection:
        email = (
            await connection.execute(
                select(TaskRun.id, TaskRun.admitted_at).where(
                    TaskRun.tenant_id == a.tenant_id, TaskRun.task == "accounts.send_email"
                )
            )
        ).one()
    assert email.admitted_at is not None  # admitted past the share
    await wait_published(engine, email.id)
    rows = await ledger_rows(engine, a.tenant_id)
    waiting = [row for row in rows if row.admitted_at is None]
    assert len(waiting) == 2  # the tenant's own runs still wait for their share
