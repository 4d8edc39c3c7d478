"""Fair share on a real worker process, RabbitMQ, PostgreSQL and Redis, through the REST API.

Tenant A queues a backlog far past its cap; tenant B's runs start within seconds while A's
backlog is still draining; A's runs in flight (and started) never pass its cap, sampled
every 50 ms from the ledger; each run is delivered once (no reject-requeue loop), a delayed
run due while A is at its cap waits for a slot and then runs; every run succeeds once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import RunState, TaskRun
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.scrape import metric_value
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, submit, wait_for_run

pytestmark = pytest.mark.e2e

CAP = 3
BACKLOG = 9
# Long runs, and a delayed run due one second after it is submitted: it comes due well before
# A's first runs end, while every slot of A's is busy, not at the moment one is handed on to
# A's next waiting run (a slot is free for a moment then, and a run coming due may take it).
RUN_SECONDS = 4.0
DUE_AFTER_SECONDS = 1


@pytest.fixture
def engine(own_engine: AsyncEngine) -> AsyncEngine:
    """This test's own database (tests.fixtures.postgres.own_database)."""
    return own_engine


@pytest.fixture
async def gateway(
    make_settings: SettingsFactory, own_broker: str, own_database: URL
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        fair_share=True,
        tenant_max_runs_in_flight=CAP,
    )
    async with running(create_app(settings)) as client:
        yield client


async def tenant_counts(engine: AsyncEngine, tenant_id: uuid.UUID) -> tuple[int, int, int]:
    """(started, in flight, waiting) of a tenant, from the ledger."""
    in_flight = TaskRun.admitted_at.is_not(None) & TaskRun.state.in_(
        (RunState.QUEUED, RunState.STARTED, RunState.RETRYING)
    )
    waiting = TaskRun.admitted_at.is_(None) & (TaskRun.state == RunState.QUEUED)
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(
                    func.count().filter(TaskRun.state == RunState.STARTED),
                    func.count().filter(in_flight),
                    func.count().filter(waiting),
                ).where(TaskRun.tenant_id == tenant_id)
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def tenant_metrics(port: int, tenant_id: uuid.UUID, within: float = 10) -> dict[str, float]:
    """The tenant's sampled runs by state, once the sampler has seen it waiting."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5) as scraper:
        while True:
            text = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text
            shown = {
                state: metric_value(
                    text, "switchyard_tenant_runs", tenant_id=str(tenant_id), state=state
                )
                for state in ("in_flight", "waiting_for_capacity")
            }
            if shown["waiting_for_capacity"] > 0 or time.monotonic() > deadline:
                return shown
            await asyncio.sleep(0.2)


async def test_another_tenant_starts_while_a_backlog_drains_within_its_cap(
    gateway: httpx.AsyncClient,
    own_broker: str,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    start_worker_on(
        start_role,
        task_env,
        own_broker,
        tmp_path / "worker",
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        WORKER_CONCURRENCY="10",
        FAIR_SHARE="true",
        TENANT_MAX_RUNS_IN_FLIGHT=str(CAP),
        WORKER_METRICS_PORT=str(metrics_port),
        METRICS_SAMPLE_SECONDS="0.5",
    )
    a: Account = await sign_up(gateway)
    b: Account = await sign_up(gateway)
    peaks = {"started": 0, "in_flight": 0}
    sampling = True

    async def sample() -> None:
        while sampling:
            started, in_flight, _ = await tenant_counts(engine, a.tenant_id)
            peaks["started"] = max(peaks["started"], started)
            peaks["in_flight"] = max(peaks["in_flight"], in_flight)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    gateway.headers.update(a.headers)
    backlog = [
        await submit(gateway, "system.sleep", {"seconds": RUN_SECONDS}) for _ in range(BACKLOG)
    ]
    delayed = await submit(
        gateway, "system.echo", {"message": "later"}, countdown=DUE_AFTER_SECONDS
    )

    gateway.headers.update(b.headers)
    submitted = time.monotonic()
    b_runs = [await submit(gateway, "system.sleep", {"seconds": 0.5}) for _ in range(3)]
    b_started = []
    for run_id in b_runs:
        run = await wait_for_run(gateway, run_id, ("started", "succeeded"), within=30)
        b_started.append(run)
    waited = time.monotonic() - submitted
    _, _, a_waiting = await tenant_counts(engine, a.tenant_id)
    # B did not wait for A's backlog (about BACKLOG / CAP * RUN_SECONDS = 12 s of it).
    assert waited < 4, f"B's runs started {waited:.1f} s after submission"
    assert a_waiting >= BACKLOG // 2, "A's backlog was still draining"
    # The worker's metrics show A's share per tenant while it drains.
    shown = await tenant_metrics(metrics_port, a.tenant_id)
    assert 1 <= shown["in_flight"] <= CAP  # CAP but for a slot being handed on
    assert 0 < shown["waiting_for_capacity"] <= BACKLOG

    gateway.headers.update(a.headers)
    for run_id in [*backlog, delayed]:
        run = await wait_for_run(gateway, run_id, within=90)
        assert run["state"] == "succeeded", run
        assert run["attempts"] == 1
    sampling = False
    await sampler
    assert peaks["in_flight"] == CAP  # used its share fully, and never more
    assert peaks["started"] <= CAP
    gateway.headers.update(b.headers)
    for run_id in b_runs:
        assert (await wait_for_run(gateway, run_id, within=30))["state"] == "succeeded"

    async with httpx.AsyncClient(timeout=5) as scraper:
        metrics = (await scraper.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    tasks_total = "switchyard_worker_tasks_total"
    received = metric_value(metrics, tasks_total, event="received")
    parked = metric_value(metrics, tasks_total, event="parked")
    # One delivery per run; the delayed run came due while A was at its cap: parked once,
    # then published again when a slot freed.
    assert parked == 1
    assert received == BACKLOG + 1 + len(b_runs) + 1
