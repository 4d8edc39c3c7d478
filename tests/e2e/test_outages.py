"""Outages under a real worker: the database (a run that cannot be claimed or recorded is
handed back to the broker, not dropped, failed or counted against its deliveries, and runs
once the database is back) and the broker (stopped during a burst of submissions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import TaskRun
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.faults import relayed, relayed_url
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, submit, wait_for_run

pytestmark = pytest.mark.e2e

RUNS = 6
RUN = {"task": "system.echo", "payload": {"message": "burst"}}


async def test_runs_wait_out_a_database_outage_and_run_once_after(
    own_gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    database_url: URL,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, _ = own_gateway
    with relayed(database_url) as (relay, through):
        worker = start_worker_on(
            start_role,
            task_env,
            own_broker,
            tmp_path / "worker",
            DATABASE_URL=through.render_as_string(hide_password=False),
        )
        relay.stop()  # the worker's database goes away; the gateway's stays
        task_ids = [await submit(client, "system.echo", {"message": f"m{i}"}) for i in range(RUNS)]
        # Long enough for every run to be delivered, refused by the ledger and handed back
        # more often than the delivery limit allows (2 s apart).
        deadline = time.monotonic() + 6
        while "run handed back" not in worker.stderr() + worker.stdout():
            assert time.monotonic() < deadline, "no run was handed back"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2 * DELIVERY_LIMIT + 1)
        for task_id in task_ids:
            run = (await client.get(f"/api/v1/tasks/{task_id}")).json()
            assert run["state"] == "queued", run  # neither failed nor dead-lettered
            assert run["attempts"] == 0

        relay.start()
        for task_id in task_ids:
            run = await wait_for_run(client, task_id, within=30)
            assert run["state"] == "succeeded", run
            assert run["attempts"] == 1
        letters = (await client.get("/api/v1/tasks/dead-letters")).json()
        assert not {letter["task_id"] for letter in letters} & set(task_ids)
    log = worker.stderr() + worker.stdout()
    assert "the database unreachable" in log
    assert "Traceback" not in log


async def test_a_broker_outage_during_a_burst_loses_nothing_and_heals(
    make_settings: SettingsFactory,
    own_broker: str,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Each submission gets 202 (and the run completes) or 503 with Retry-After (and no run
    exists for it); the gateway and the worker reconnect by themselves within 15 s."""
    with relayed_url(own_broker, 5672) as (relay, through):
        settings = make_settings(
            celery_broker_url=through,
            task_delivery_limit=DELIVERY_LIMIT,
            broker_publish_timeout_seconds=2,
        )
        async with running(create_app(settings)) as client:
            account = await sign_up(client)
            client.headers.update(account.headers)
            worker = start_worker_on(start_role, task_env, through, tmp_path / "worker")
            answers: list[tuple[float, httpx.Response]] = []
            returned: list[float] = []  # when the broker came back
            healed, done = asyncio.Event(), asyncio.Event()

            async def submitter() -> None:
                while not done.is_set():
                    answer = await client.post("/api/v1/tasks/run", json=RUN)
                    answers.append((time.monotonic(), answer))
                    if returned and answer.status_code == 202 and answers[-1][0] > returned[0]:
                        healed.set()

            async def outage() -> None:
                await asyncio.sleep(1)
                relay.stop()
                await asyncio.sleep(4)
                relay.start()
                returned.append(time.monotonic())
                await asyncio.wait_for(healed.wait(), 30)
                await asyncio.sleep(1)
                done.set()

            await asyncio.gather(outage(), *(submitter() for _ in range(4)))
            back = returned[0]
            returned_at = datetime.now(UTC) - timedelta(seconds=time.monotonic() - back)

            accepted = [a.json()["task_id"] for _, a in answers if a.status_code == 202]
            refused = [a for _, a in answers if a.status_code != 202]
            assert refused, "no submission met the outage"
            for answer in refused:
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "5"
                assert answer.headers["content-type"] == "application/problem+json"
            first_after = min(at for at, a in answers if at > back and a.status_code == 202)
            assert first_after - back <= 15  # the gateway reconnected by itself

            for task_id in accepted:
                run = await wait_for_run(client, task_id, within=60)
                assert run["state"] == "succeeded", run
            async with engine.connect() as connection:
                stored = await connection.scalar(
                    select(func.count())
                    .select_from(TaskRun)
                    .where(TaskRun.tenant_id == account.tenant_id)
                )
                resumed = await connection.scalar(
                    select(func.min(TaskRun.started_at)).where(
                        TaskRun.tenant_id == account.tenant_id,
                        TaskRun.started_at >= returned_at,
                    )
                )
            assert stored == len(accepted)  # a 503 left no run behind
            assert resumed is not None
            assert (resumed - returned_at).total_seconds() <= 15  # the worker reconnected
            assert worker.process.poll() is None  # without a restart
