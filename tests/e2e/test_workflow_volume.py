"""Workflows at volume, on two real worker processes and a database of the test's own:

- one workflow maps over 10,000 items (WORKFLOW_MAX_MAP_ITEMS' default) and its fan-in step
  receives all 10,000 outputs in item order;
- 200 workflows (a root, a map of three, a fan-in) while one worker is SIGKILLed five times
  and restarted, beat running as deployed: every workflow succeeds, every step has exactly
  its runs (none lost, none made twice), and every fan-in saw its items' outputs in order.

The figures are printed (pytest -s)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import TaskRun, WorkflowRun, WorkflowStep
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole, Starter
from tests.fixtures.tasks import start_worker_on

# Minutes, not seconds, on a loaded CI machine: above the suite's 120 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MODULE = "tests.fakes.workflow_tasks"
REPO = Path(__file__).resolve().parents[2]
KILLS = 5
DELIVERY_LIMIT = KILLS + 3  # above the deliveries a run can use here: all must succeed


@pytest.fixture
def engine(own_engine: AsyncEngine) -> AsyncEngine:
    """A database of this test alone: its runs wait for the tenant's share, and the session's
    other workers (without these tasks) sweep the session's database for waiting runs."""
    return own_engine


@pytest.fixture
async def client(
    make_settings: SettingsFactory, own_broker: str, own_database: URL
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        task_modules=[MODULE],
    )
    async with running(create_app(settings)) as client:
        client.headers.update((await sign_up(client)).headers)
        yield client


@pytest.fixture
def start_worker(
    start_role: Starter,
    task_env: dict[str, str],
    own_broker: str,
    engine: AsyncEngine,
    tmp_path: Path,
) -> Callable[[str], RunningRole]:
    def start(name: str) -> RunningRole:
        return start_worker_on(
            start_role.untraced,  # volume: what survives is the point, not the lines
            task_env,
            own_broker,
            tmp_path / name,
            DATABASE_URL=engine.url.render_as_string(hide_password=False),
            TASK_DELIVERY_LIMIT=str(DELIVERY_LIMIT),
            TASK_MODULES=MODULE,
            PYTHONPATH=str(REPO),
        )

    return start


@pytest.fixture
def beat(
    start_role: Starter,
    task_env: dict[str, str],
    own_broker: str,
    engine: AsyncEngine,
    tmp_path: Path,
) -> RunningRole:
    """Beat with its defaults on the test's database and broker: its outbox publishes what a
    killed worker committed but did not get to publish (TASK_REPUBLISH_AFTER_SECONDS)."""
    workdir = tmp_path / "beat"
    workdir.mkdir()
    env = {
        **task_env,
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "CELERY_BROKER_URL": own_broker,
        "TASK_DELIVERY_LIMIT": str(DELIVERY_LIMIT),
        "TASK_MODULES": MODULE,
        "PYTHONPATH": str(REPO),
        "VAR_DIR": str(workdir),
    }
    role = start_role.untraced("beat", 0, workdir, **env)
    role.wait_heartbeat(workdir / "beat.heartbeat")
    return role


def fan_out_and_in(count: int, sleep: Any = 0) -> list[dict[str, Any]]:
    return [
        {
            "name": "spread",
            "task": "testing.spread",
            "payload": {"first": {"$input": "/first"}, "count": count},
        },
        {
            "name": "each",
            "task": "testing.square",
            "needs": ["spread"],
            "map": {"$step": "spread", "pointer": "/items"},
            "payload": {"n": {"$item": ""}, "sleep_ms": sleep},
        },
        {
            "name": "total",
            "task": "testing.total",
            "needs": ["each"],
            "payload": {"values": {"$step": "each"}},
        },
    ]


async def register(client: httpx.AsyncClient, steps: list[dict[str, Any]]) -> str:
    name = f"wf-{uuid.uuid4().hex[:8]}"
    created = await client.post("/api/v1/workflows", json={"name": name, "steps": steps})
    assert created.status_code == 201, created.text
    return name


async def all_ended(
    engine: AsyncEngine, ids: list[str], workers: list[RunningRole], within: float
) -> None:
    deadline = time.monotonic() + within
    wanted = [uuid.UUID(run_id) for run_id in ids]
    while True:
        async with engine.connect() as connection:
            running_left = await connection.scalar(
                select(func.count())
                .select_from(WorkflowRun)
                .where(WorkflowRun.id.in_(wanted), WorkflowRun.state == "running")
            )
        if running_left == 0:
            return
        for worker in workers:
            assert worker.process.poll() is None, worker.stderr()[-3000:]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{running_left} of {len(ids)} workflows running: {await stuck(engine, wanted)}"
            )
        await asyncio.sleep(0.5)


async def stuck(engine: AsyncEngine, ids: list[uuid.UUID]) -> list[Any]:
    """The steps not ended of the workflows still running, with their runs' states."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                WorkflowStep.workflow_run_id,
                WorkflowStep.name,
                WorkflowStep.state,
                WorkflowStep.parents_left,
                WorkflowStep.items_left,
                TaskRun.item_index,
                TaskRun.state,
                TaskRun.attempts,
                TaskRun.admitted_at.is_not(None),
                TaskRun.published_at.is_not(None),
            )
            .outerjoin(TaskRun, TaskRun.workflow_step_id == WorkflowStep.id)
            .join(WorkflowRun, WorkflowRun.id == WorkflowStep.workflow_run_id)
            .where(WorkflowRun.id.in_(ids), WorkflowRun.state == "running")
            .where(WorkflowStep.state.in_(("waiting", "running")))
        )
        return [tuple(row) for row in rows]


async def test_a_map_over_10000_items_fans_in_every_output_in_order(
    client: httpx.AsyncClient, engine: AsyncEngine, start_worker: Callable[[str], RunningRole]
) -> None:
    items = 10_000
    workers = [start_worker("worker-a"), start_worker("worker-b")]
    name = await register(client, fan_out_and_in(items))
    started_at = time.monotonic()
    started = await client.post(f"/api/v1/workflows/{name}/runs", json={"input": {"first": 0}})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    await all_ended(engine, [run_id], workers, within=420)
    took = time.monotonic() - started_at

    view = (await client.get(f"/api/v1/workflows/runs/{run_id}")).json()
    assert view["state"] == "succeeded", view["error"]
    _, each, total = view["steps"]
    assert (each["items"], each["items_left"], each["failed_items"]) == (items, 0, 0)
    assert total["result"] == {
        "count": items,
        "sum": sum(n * n for n in range(items)),
        "ascending": True,
        "first": 0,
    }
    async with engine.connect() as connection:
        indexes = (
            await connection.execute(
                select(TaskRun.item_index, TaskRun.state)
                .join(WorkflowStep, WorkflowStep.id == TaskRun.workflow_step_id)
                .where(WorkflowStep.workflow_run_id == uuid.UUID(run_id))
                .where(WorkflowStep.name == "each")
            )
        ).all()
    assert sorted(row.item_index for row in indexes) == list(range(items))  # one run per item
    assert {row.state for row in indexes} == {"succeeded"}
    print(f"\n10,000-item map on two workers: {took:.1f} s ({items / took:.0f} step runs/s)")


async def test_200_workflows_survive_a_worker_killed_five_times(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    start_worker: Callable[[str], RunningRole],
    beat: RunningRole,
) -> None:
    """A kill between a step's commit and the publish of the runs it made due leaves them in
    the ledger, admitted and unpublished: beat's outbox publishes them, as a deployment runs
    it. Nothing else may be missing or doubled."""
    workflows, width = 200, 3
    random.seed(workflows)
    steady, victim = start_worker("steady"), start_worker("victim-0")
    name = await register(client, fan_out_and_in(width, sleep=20))
    ids: list[str] = []
    pending = iter(range(workflows))

    async def starter() -> None:
        for number in pending:
            answer = await client.post(
                f"/api/v1/workflows/{name}/runs", json={"input": {"first": number * width}}
            )
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])

    async def killer() -> None:
        nonlocal victim
        for number in range(1, KILLS + 1):
            await asyncio.sleep(random.uniform(0.3, 2.0))
            victim.kill_all()
            victim = await asyncio.to_thread(start_worker, f"victim-{number}")

    started_at = time.monotonic()
    await asyncio.gather(killer(), *(starter() for _ in range(4)))
    await all_ended(engine, ids, [steady, victim, beat], within=300)
    took = time.monotonic() - started_at

    wanted = [uuid.UUID(run_id) for run_id in ids]
    async with engine.connect() as connection:
        states = Counter(
            (
                await connection.scalars(
                    select(WorkflowRun.state).where(WorkflowRun.id.in_(wanted))
                )
            ).all()
        )
        runs = (
            await connection.execute(
                select(
                    WorkflowStep.workflow_run_id,
                    WorkflowStep.name,
                    TaskRun.item_index,
                    TaskRun.state,
                    TaskRun.attempts,
                    TaskRun.result,
                    TaskRun.payload,
                )
                .join(TaskRun, TaskRun.workflow_step_id == WorkflowStep.id)
                .where(WorkflowStep.workflow_run_id.in_(wanted))
            )
        ).all()
    assert states == {"succeeded": workflows}
    # Every step has exactly its runs: one for the root and the fan-in, one per item between.
    made = Counter((row.workflow_run_id, row.name, row.item_index) for row in runs)
    assert set(made.values()) == {1}
    assert Counter(row.name for row in runs) == {
        "spread": workflows,
        "each": workflows * width,
        "total": workflows,
    }
    assert {row.state for row in runs} == {"succeeded"}
    for row in runs:
        if row.name == "total":
            first = row.result["first"]
            squares = sum(n * n for n in range(first, first + width))
            assert row.result == {"count": width, "sum": squares, "ascending": True, "first": first}
    redelivered = sum(1 for row in runs if row.attempts > 1)
    print(
        f"\n{workflows} workflows ({len(runs)} step runs), {KILLS} kills: {took:.1f} s, "
        f"{redelivered} step runs run again after a kill"
    )
