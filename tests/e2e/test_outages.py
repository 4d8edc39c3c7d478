"""Workers during a database outage: a run that cannot be claimed or recorded is handed back
to the broker (not dropped, not failed, not counted against its deliveries) and runs once the
database is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.faults import relayed
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, submit, wait_for_run

pytestmark = pytest.mark.e2e

RUNS = 6


@pytest.fixture
async def gateway(
    make_settings: SettingsFactory, own_broker: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    settings = make_settings(celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT)
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        yield client, account


async def test_runs_wait_out_a_database_outage_and_run_once_after(
    gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    database_url: URL,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, _ = gateway
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
