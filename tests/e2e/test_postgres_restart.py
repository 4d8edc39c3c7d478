"""A real PostgreSQL restart under load: a server of the test's own (never the shared one) is
stopped with a fast shutdown while four clients submit, and started again. Every state of the
restarting server is an outage: 503 with Retry-After at the gateway, a run handed back (not
failed, not counted) at the worker, a dead letter archived later (not in a tight loop)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from kombu import Connection, Producer
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.api.app import create_app
from switchyard.db.migrate import migrate
from switchyard.db.models import TaskRun
from switchyard.embedded.postgres import EmbeddedPostgres
from switchyard.platform.topology import DEAD_LETTER_EXCHANGE
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, wait_for_run

pytestmark = pytest.mark.e2e

RUN = {"task": "system.echo", "payload": {"message": "through a restart"}}
OUTAGE_SECONDS = 6


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "own-postgres", port=free_port())
    with server:
        yield server


def _dead_letter(broker: str, task: str) -> None:
    """A message as the broker dead-letters one (x-death), for the worker's archive."""
    with Connection(broker) as connection:
        Producer(connection).publish(
            [[str(uuid.uuid4())], {}, {}],
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key="default",
            serializer="json",
            headers={
                "task": task,
                "x-death": [{"queue": "default", "reason": "delivery_limit", "count": 1}],
            },
            declare=[DEAD_LETTER_EXCHANGE],
        )


async def test_a_postgres_restart_under_load_loses_no_accepted_run(
    own_postgres: EmbeddedPostgres,
    make_settings: SettingsFactory,
    own_broker: str,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    url: URL = own_postgres.url()
    await migrate(url)
    dsn = url.render_as_string(hide_password=False)
    settings = make_settings(
        database_url=dsn, celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT
    )
    worker = start_worker_on(
        start_role, task_env, own_broker, tmp_path / "worker", DATABASE_URL=dsn
    )
    letter_task = f"restart.letter-{uuid.uuid4().hex[:8]}"
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        answers: list[tuple[float, httpx.Response]] = []
        back: list[float] = []
        healed, done = asyncio.Event(), asyncio.Event()

        async def submitter() -> None:
            while not done.is_set():
                answer = await client.post("/api/v1/tasks/run", json=RUN)
                answers.append((time.monotonic(), answer))
                if back and answer.status_code == 202 and answers[-1][0] > back[0]:
                    healed.set()
                await asyncio.sleep(0.01)

        async def restart() -> None:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(own_postgres.stop)  # SIGINT: PostgreSQL's fast shutdown
            await asyncio.to_thread(_dead_letter, own_broker, letter_task)
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(own_postgres.start)
            back.append(time.monotonic())
            await asyncio.wait_for(healed.wait(), 30)
            await asyncio.sleep(1)
            done.set()

        await asyncio.gather(restart(), *(submitter() for _ in range(4)))

        statuses = {answer.status_code for _, answer in answers}
        assert statuses <= {202, 503}, [a.text for _, a in answers if a.status_code >= 500][:3]
        refused = [answer for _, answer in answers if answer.status_code == 503]
        assert refused, "no submission met the restart"
        for answer in refused:
            assert answer.headers["retry-after"] == "5"
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "dependency_unavailable"
        accepted = [answer.json()["task_id"] for _, answer in answers if answer.status_code == 202]
        for task_id in accepted:
            run = await wait_for_run(client, task_id, within=90)
            assert run["state"] == "succeeded", run
            # A refused claim is no attempt; an outcome the restart cut off is one, taken over.
            assert run["attempts"] <= 2, run

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            stored = await connection.scalar(
                select(func.count())
                .select_from(TaskRun)
                .where(TaskRun.tenant_id == account.tenant_id)
            )
            deadline = time.monotonic() + 60
            archived = 0
            while not archived and time.monotonic() < deadline:
                archived = int(
                    await connection.scalar(
                        text("SELECT count(*) FROM dead_letters WHERE task = :task"),
                        {"task": letter_task},
                    )
                    or 0
                )
                await connection.commit()
                await asyncio.sleep(0.5)
    finally:
        await engine.dispose()
    assert stored == len(accepted)  # a 503 left no run behind
    assert archived == 1
    # The dead-letter archive backed off: a handful of tries in the outage, not hundreds.
    tries = (worker.stderr() + worker.stdout()).count("dead letter not archived")
    assert 1 <= tries <= 8, tries
