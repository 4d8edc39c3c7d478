"""A 202 is a run that runs: re-publishing after a lost publish; no second execution."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.domains import load_task_modules
from switchyard.platform.beat import Beat
from switchyard.platform.broker import Broker
from switchyard.services.container import Services
from switchyard.settings import Settings
from tests.fixtures.accounts import Account
from tests.fixtures.tasks import insert_run, publish_run, wait_for_run

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("default_worker")]


async def test_run_whose_publish_never_happened_is_republished_and_runs(
    tasks_api: httpx.AsyncClient,
    tasks_account: Account,
    task_settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    """The gateway died between its ledger write and the publish: the row is all there is."""
    orphan = await insert_run(
        engine,
        tasks_account.tenant_id,
        payload={"message": "orphan"},
        created_at=datetime.now(UTC) - timedelta(minutes=1),
    )

    services = Services.create(task_settings, "beat")
    broker = Broker.create(task_settings)
    assert broker is not None
    try:
        beat = Beat(services, broker.publisher, load_task_modules(), tmp_path / "beat.heartbeat")
        assert await beat.republish_stale(datetime.now(UTC)) >= 1
        assert await beat.republish_stale(datetime.now(UTC)) == 0
    finally:
        await services.close()
        broker.close()

    run = await wait_for_run(tasks_api, str(orphan.id))
    assert run["state"] == "succeeded"
    assert run["result"] == {"message": "orphan"}
    assert run["attempts"] == 1


async def test_a_delivery_of_a_final_run_is_not_executed_again(
    tasks_api: httpx.AsyncClient, task_settings: Settings
) -> None:
    accepted = await tasks_api.post(
        "/api/v1/tasks/run", json={"task": "system.fail", "payload": {"fail_attempts": 0}}
    )
    task_id = accepted.json()["task_id"]
    first = await wait_for_run(tasks_api, task_id)
    assert first["attempts"] == 1

    broker = Broker.create(task_settings)
    assert broker is not None
    try:
        await publish_run(broker, task_id, "system.fail", "default", None, None)
    finally:
        broker.close()
    await asyncio.sleep(3)
    again = (await tasks_api.get(f"/api/v1/tasks/{task_id}")).json()
    assert again["attempts"] == 1
    assert again["finished_at"] == first["finished_at"]


async def test_worker_validates_the_payload_again(
    tasks_api: httpx.AsyncClient,
    tasks_account: Account,
    task_settings: Settings,
    engine: AsyncEngine,
) -> None:
    """A stored payload that no longer fits the task's schema fails without running it."""
    run = await insert_run(
        engine,
        tasks_account.tenant_id,
        task="system.sleep",
        payload={"seconds": "a while"},
    )
    broker = Broker.create(task_settings)
    assert broker is not None
    try:
        await publish_run(broker, str(run.id), run.task, run.queue, None, None)
    finally:
        broker.close()
    stored = await wait_for_run(tasks_api, str(run.id))
    assert stored["state"] == "failed"
    assert stored["error"]["type"] == "InvalidPayloadError"
    assert stored["result"] is None


async def test_a_message_naming_another_tenant_is_refused(
    tasks_api: httpx.AsyncClient,
    tasks_account: Account,
    task_settings: Settings,
    engine: AsyncEngine,
) -> None:
    """Runs carry their tenant in the message; a worker runs a run only in its own tenant."""
    run = await insert_run(
        engine,
        tasks_account.tenant_id,
        payload={"message": "mine"},
    )
    broker = Broker.create(task_settings)
    assert broker is not None
    try:
        await publish_run(broker, str(run.id), run.task, run.queue, None, str(uuid.uuid4()))
        await asyncio.sleep(3)
        refused = (await tasks_api.get(f"/api/v1/tasks/{run.id}")).json()
        assert (refused["state"], refused["attempts"]) == ("queued", 0)
        await publish_run(
            broker, str(run.id), run.task, run.queue, None, str(tasks_account.tenant_id)
        )
    finally:
        broker.close()
    assert (await wait_for_run(tasks_api, str(run.id)))["state"] == "succeeded"
