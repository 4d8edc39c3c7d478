"""One worker process, many runs in flight on its one event loop: real worker processes on the
machine's RabbitMQ, PostgreSQL and Redis, driven through the REST API.

- 200 runs await together on one process at WORKER_CONCURRENCY=200 (each waits until all 200
  have arrived), and its PostgreSQL connections stay within its pool (size + overflow);
- soft and hard limits end a run that awaits, a run that swallows cancellation and a run that
  blocks the loop (the process is replaced, the run fails, its dead letter is archived);
- cancelling a started run stops its coroutine;
- SIGTERM with 50 runs in flight loses none and runs none twice."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest
import redis.asyncio as redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import DeadLetter, TaskRun
from tests.fixtures import names
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.messaging import ready_messages
from tests.fixtures.processes import RunningRole, Starter
from tests.fixtures.scrape import metric_value
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, submit, wait_for_run

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LIMITS = "tests.fakes.limit_tasks"
RECORDING = "tests.fakes.recording_tasks"
POOL_SIZE, MAX_OVERFLOW = 4, 4


@pytest.fixture
async def gateway(
    make_settings: SettingsFactory, own_broker: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    """The gateway in process on this test's own broker, knowing the misbehaving tasks."""
    settings = make_settings(
        celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT, task_modules=[LIMITS]
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        yield client, account


def worker_process(worker: RunningRole) -> psutil.Process:
    """The one worker process under the role's supervisor."""
    [child] = psutil.Process(worker.process.pid).children()
    return child


def database_connections(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for connection in process.net_connections("tcp")
        if connection.raddr and connection.raddr.port == port and connection.status == "ESTABLISHED"
    )


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


async def runs_of(engine: AsyncEngine, run_ids: list[str]) -> dict[str, TaskRun]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(TaskRun).where(TaskRun.id.in_([uuid.UUID(r) for r in run_ids]))
        )
        return {str(row.id): row for row in rows}  # type: ignore[misc]


async def wait_all_final(engine: AsyncEngine, run_ids: list[str], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        runs = await runs_of(engine, run_ids)
        final = [r for r in runs.values() if r.finished_at is not None]
        if len(final) == len(run_ids):
            return
        assert time.monotonic() < deadline, f"{len(final)} of {len(run_ids)} runs final"
        await asyncio.sleep(0.2)


@pytest.fixture
async def roomy_gateway(
    make_settings: SettingsFactory, own_broker: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on this test's broker (fair share off, as the session's: every run is
    published at once)."""
    settings = make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        task_modules=[LIMITS],
    )
    async with running(create_app(settings)) as client:
        client.headers.update((await sign_up(client)).headers)
        yield client


async def test_two_hundred_awaiting_runs_overlap_on_one_process_within_its_pool(
    roomy_gateway: httpx.AsyncClient,
    own_broker: str,
    engine: AsyncEngine,
    redis_url: str,
    start_role: Starter,
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client = roomy_gateway
    worker = start_worker_on(
        start_role.untraced,  # 200 runs at once: the overlap is the point, not the lines
        task_env,
        own_broker,
        tmp_path / "worker",
        TASK_MODULES=LIMITS,
        PYTHONPATH=str(REPO),
        WORKER_CONCURRENCY="200",
        DATABASE_POOL_SIZE=str(POOL_SIZE),
        DATABASE_MAX_OVERFLOW=str(MAX_OVERFLOW),
    )
    process = worker_process(worker)
    port = engine.url.port or 5432
    # Each run arrives at a counter and awaits until all 200 have: they can only succeed if
    # the one process holds all 200 at once (with fewer slots, those held time out and fail).
    meeting = f"{names.PREFIX}:rendezvous:{uuid.uuid4().hex}"
    payload = {"key": meeting, "expected": 200, "seconds": 90}
    run_ids = await asyncio.gather(
        *(submit(client, "testing.rendezvous", payload) for _ in range(200))
    )
    most_connections = 0
    deadline = time.monotonic() + 120
    while True:
        most_connections = max(most_connections, database_connections(process, port))
        runs = await runs_of(engine, run_ids)
        if all(r.finished_at is not None for r in runs.values()) and len(runs) == 200:
            break
        assert time.monotonic() < deadline, "the 200 runs did not finish"
        await asyncio.sleep(0.05)
    store = redis.Redis.from_url(redis_url)
    try:
        await store.delete(meeting)
    finally:
        await store.aclose()

    assert {r.state for r in runs.values()} == {"succeeded"}
    assert {r.attempts for r in runs.values()} == {1}
    intervals = [
        (r.started_at.timestamp(), r.finished_at.timestamp())
        for r in runs.values()
        if r.started_at and r.finished_at
    ]
    assert sorted((r.result or {})["arrived"] for r in runs.values()) == list(range(1, 201))
    # Each started before it arrived and finished after the last arrival.
    assert max_overlap(intervals) == 200
    assert 1 <= most_connections <= POOL_SIZE + MAX_OVERFLOW
    assert worker.process.poll() is None


async def test_time_limits_end_runs_that_await_ignore_cancellation_or_block_the_loop(
    gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, account = gateway
    metrics_port = free_port()
    worker = start_worker_on(
        start_role,
        task_env,
        own_broker,
        tmp_path / "worker",
        TASK_MODULES=LIMITS,
        PYTHONPATH=str(REPO),
        WORKER_METRICS_PORT=str(metrics_port),
    )
    first = worker_process(worker)

    awaiting = await submit(client, "testing.await_forever", {"seconds": 60})
    stubborn = await submit(client, "testing.ignore_cancel", {"seconds": 60})
    soft = await wait_for_run(client, awaiting, within=30)
    assert soft["state"] == "failed"
    assert soft["error"]["type"] == "TimeoutError"
    hard = await wait_for_run(client, stubborn, within=30)
    assert hard["state"] == "failed"
    assert hard["error"]["type"] == "TimeLimitExceededError"
    assert "time limit of 2.5 s" in hard["error"]["message"]

    blocker = await submit(client, "testing.block_loop", {"seconds": 60})
    echo = await submit(client, "system.echo", {"message": "after the block"})
    blocked = await wait_for_run(client, blocker, within=30)
    assert blocked["state"] == "failed"
    assert blocked["error"]["type"] == "TimeLimitExceededError"
    assert "blocked the worker's event loop" in blocked["error"]["message"]
    # The echo runs on the process's successor (or ran before the block began): either way
    # it succeeds, and the blocked process is gone. Its exit is waited for, not assumed: the
    # run is failed before the process ends (under coverage, saving its data takes a moment).
    assert (await wait_for_run(client, echo, within=60))["state"] == "succeeded"
    await asyncio.to_thread(first.wait, 30)
    assert worker.process.poll() is None
    async with engine.connect() as connection:
        letters = (
            await connection.execute(
                select(DeadLetter.reason, DeadLetter.run_id).where(
                    DeadLetter.tenant_id == account.tenant_id
                )
            )
        ).all()
    assert ("time_limit", uuid.UUID(blocker)) in letters
    log = worker.stderr()
    assert "event loop stalled: a handler blocks it" in log
    # Counted by the process that stalled (and was replaced), served by the supervisor.
    async with httpx.AsyncClient(timeout=5) as scraper:
        metrics = (await scraper.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    stalls = "switchyard_worker_loop_stalls_total"
    assert metric_value(metrics, stalls, task="testing.block_loop") >= 1
    abandoned = "switchyard_worker_runs_abandoned_total"
    assert metric_value(metrics, abandoned, task="testing.ignore_cancel", reason="time_limit") == 1
    assert "run ignores cancellation: abandoned" in log


async def test_cancel_stops_a_started_run_and_acks_it(
    gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, _ = gateway
    worker = start_worker_on(
        start_role, task_env, own_broker, tmp_path / "worker", WORKER_CONCURRENCY="1"
    )
    run = await submit(client, "system.sleep", {"seconds": 60})
    await wait_for_run(client, run, ("started",))
    answer = await client.post(f"/api/v1/tasks/{run}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"
    # The worker's one slot frees as the coroutine stops: the run behind it starts and ends.
    echo = await submit(client, "system.echo", {"message": "next"})
    assert (await wait_for_run(client, echo, within=10))["state"] == "succeeded"
    final = (await client.get(f"/api/v1/tasks/{run}")).json()
    assert final["state"] == "cancelled"
    assert final["attempts"] == 1
    assert "run cancelled while it ran" in worker.stderr()
    # Acked, not handed back: once the worker is gone nothing of it is left in the queue.
    assert worker.stop() == 0
    assert await ready_messages(own_broker, "default", 0) == 0


async def test_sigterm_with_fifty_in_flight_loses_none_and_runs_none_twice(
    gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    engine: AsyncEngine,
    redis_url: str,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, _ = gateway
    completions = f"{names.PREFIX}:completions:{uuid.uuid4().hex}"

    def start(name: str) -> RunningRole:
        return start_worker_on(
            start_role,
            task_env,
            own_broker,
            tmp_path / name,
            TASK_MODULES=LIMITS,
            PYTHONPATH=str(REPO),
            WORKER_CONCURRENCY="50",
            WORKER_SHUTDOWN_GRACE_SECONDS="3",
        )

    first = start("first")
    # Half finish within the grace period, half are still awaiting when it ends.
    quick = [
        await submit(client, "testing.finish_record", {"ledger": completions, "seconds": 1})
        for _ in range(25)
    ]
    slow = [
        await submit(client, "testing.finish_record", {"ledger": completions, "seconds": 20})
        for _ in range(25)
    ]
    run_ids = quick + slow
    deadline = time.monotonic() + 30
    while True:
        runs = await runs_of(engine, run_ids)
        if sum(1 for r in runs.values() if r.started_at is not None) == 50:
            break
        assert time.monotonic() < deadline, "the 50 runs did not all start"
        await asyncio.sleep(0.05)
    assert first.stop(signal.SIGTERM, timeout=30) == 0
    after_stop = await runs_of(engine, run_ids)
    assert {after_stop[r].state for r in quick} == {"succeeded"}
    assert {after_stop[r].state for r in slow} == {"queued"}  # handed back, not failed

    start("second")
    await wait_all_final(engine, run_ids, within=60)
    runs = await runs_of(engine, run_ids)
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        done = {k: int(v) for k, v in (await store.hgetall(completions)).items()}
        await store.delete(completions)
    finally:
        await store.aclose()
    assert {r.state for r in runs.values()} == {"succeeded"}  # none lost
    assert done == dict.fromkeys(run_ids, 1)  # every one completed exactly once
    assert {runs[r].attempts for r in quick} == {1}
    assert {runs[r].attempts for r in slow} == {2}
