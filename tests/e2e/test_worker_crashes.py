"""Worker crashes: runs submitted while the worker (its supervisor and worker process) is
SIGKILLed at random moments five times and restarted each time. Every run reaches
`succeeded`, every one executed at least once, the ledger agrees with what the handlers
recorded (a Redis hash outside the ledger), and a run executes twice only when a kill caught
it mid-handler.

Full size is 1,000 runs (the CI default, ~1 min); FAULT_RUNS sizes it (e.g. FAULT_RUNS=200
for a quick local run). The figures of a run are printed (pytest -s) and kept in the note."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import FINAL_STATES, TaskRun
from tests.fixtures import names
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole, Starter
from tests.fixtures.tasks import start_worker_on

pytestmark = pytest.mark.e2e

RUNS = int(os.environ.get("FAULT_RUNS", "1000"))
KILLS = 5
CONCURRENCY = 50  # runs in flight on the worker process's loop when each kill comes
# Above the deliveries a run can use here (one per kill, plus its own): all must succeed.
DELIVERY_LIMIT = KILLS + 3
MODULE = "tests.fakes.recording_tasks"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(own_engine: AsyncEngine) -> AsyncEngine:
    """A database of this test alone: its 1,000 runs are past the tenant's share of 100, and
    the session's other workers (on other brokers, without this test's tasks) sweep the
    session's database for waiting runs."""
    return own_engine


@pytest.fixture
async def gateway(
    make_settings: SettingsFactory, own_broker: str, own_database: URL
) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    settings = make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        task_modules=[MODULE],
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        yield client, account


async def test_runs_survive_a_worker_killed_five_times(
    gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    redis_url: str,
    engine: AsyncEngine,
    start_role: Starter,
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, account = gateway
    executions = f"{names.PREFIX}:executions:{uuid.uuid4().hex}"
    random.seed(RUNS)

    def start_worker(number: int) -> RunningRole:
        return start_worker_on(
            start_role.untraced,  # five restarts under load: what survives is the point
            task_env,
            own_broker,
            tmp_path / f"worker-{number}",
            DATABASE_URL=engine.url.render_as_string(hide_password=False),
            TASK_DELIVERY_LIMIT=str(DELIVERY_LIMIT),
            TASK_MODULES=MODULE,
            WORKER_CONCURRENCY=str(CONCURRENCY),
            PYTHONPATH=str(REPO),
        )

    worker = start_worker(0)
    run_ids: list[str] = []
    pending = iter(range(RUNS))

    async def submitter() -> None:
        for _ in pending:
            payload = {"ledger": executions, "sleep_ms": random.randint(0, 30)}
            answer = await client.post(
                "/api/v1/tasks/run", json={"task": "testing.record", "payload": payload}
            )
            assert answer.status_code == 202, answer.text
            run_ids.append(answer.json()["task_id"])

    async def killer() -> None:
        nonlocal worker
        for number in range(1, KILLS + 1):
            await asyncio.sleep(random.uniform(0.3, 2.0))
            worker.kill_all()
            worker = await asyncio.to_thread(start_worker, number)

    started = time.monotonic()
    await asyncio.gather(killer(), *(submitter() for _ in range(8)))
    deadline = time.monotonic() + 240
    while True:
        async with engine.connect() as connection:
            final = await connection.scalar(
                select(func.count())
                .select_from(TaskRun)
                .where(TaskRun.tenant_id == account.tenant_id, TaskRun.state.in_(FINAL_STATES))
            )
        if final == RUNS:
            break
        assert worker.process.poll() is None, worker.stderr()
        assert time.monotonic() < deadline, f"{final} of {RUNS} runs final"
        await asyncio.sleep(0.5)
    took = time.monotonic() - started

    async with engine.connect() as connection:
        ledger = {
            str(row.id): row
            for row in await connection.execute(
                select(TaskRun.id, TaskRun.state, TaskRun.attempts, TaskRun.result).where(
                    TaskRun.tenant_id == account.tenant_id
                )
            )
        }
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        recorded = {
            str(key): int(value) for key, value in (await store.hgetall(executions)).items()
        }
        await store.delete(executions)
    finally:
        await store.aclose()

    assert sorted(ledger) == sorted(run_ids)  # nothing lost, nothing extra
    assert {row.state for row in ledger.values()} == {"succeeded"}
    assert set(recorded) == set(run_ids)  # every run executed at least once
    for run_id, row in ledger.items():
        assert 1 <= row.result["execution"] <= recorded[run_id], run_id
        assert recorded[run_id] <= row.attempts, run_id  # each execution had its own claim
    duplicates = sum(count - 1 for count in recorded.values())
    # Only a run a kill caught inside its handler runs again: at most one per pool process.
    assert duplicates <= KILLS * CONCURRENCY
    print(
        f"\n{RUNS} runs, {KILLS} kills: all succeeded in {took:.1f} s; "
        f"{duplicates} executed twice; "
        f"{sum(row.attempts for row in ledger.values()) - RUNS} extra claims"
    )
