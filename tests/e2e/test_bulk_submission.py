"""A bulk submission the broker refuses part of, on a real RabbitMQ: the answer names the
runs accepted and the runs refused, the ledger holds exactly the accepted ones, the queue
holds exactly their messages, and every accepted run completes on a real worker.

The broker refuses for real: a policy caps the `default` queue (`overflow: reject-publish`),
so once it is full RabbitMQ nacks every further message of the burst."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import TaskRun
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, wait_for_run

pytestmark = pytest.mark.e2e

RUNS = 60
QUEUE_CAP = 10


def rabbitmqctl(*args: str) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is needed to cap a queue with a policy")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def vhost(own_broker: str) -> str:
    name = urlsplit(own_broker).path.lstrip("/")
    policy = json.dumps({"max-length": QUEUE_CAP, "overflow": "reject-publish"})
    rabbitmqctl("set_policy", "-p", name, "--apply-to", "queues", "cap", "^default$", policy)
    return name


def queued_messages(vhost: str) -> int:
    for line in rabbitmqctl("list_queues", "-q", "-p", vhost, "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name == "default":
            return int(count)
    return 0


async def wait_for_messages(vhost: str, expected: int, within: float = 10.0) -> int:
    """The queue's message count once it reads `expected` (the count lags a publish)."""
    deadline = time.monotonic() + within
    count = queued_messages(vhost)
    while count != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        count = queued_messages(vhost)
    return count


@pytest.fixture
async def gateway(
    make_settings: SettingsFactory, own_broker: str, vhost: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    settings = make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        tenant_max_runs_in_flight=0,
        rate_limits_enabled=False,
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        yield client, account


async def test_a_burst_the_broker_refuses_in_part_leaves_ledger_and_queue_agreeing(
    gateway: tuple[httpx.AsyncClient, Account],
    vhost: str,
    own_broker: str,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, account = gateway
    items = [{"task": "system.echo", "payload": {"message": f"run {i}"}} for i in range(RUNS)]
    response = await client.post("/api/v1/tasks/runs", json={"runs": items})
    assert response.status_code == 207, response.text
    body = response.json()
    results = body["runs"]
    accepted = [result for result in results if result["accepted"]]
    refused = [result for result in results if not result["accepted"]]
    assert body["accepted"] == len(accepted) >= QUEUE_CAP
    assert body["refused"] == len(refused) > 0
    assert all(result["task_id"] is None and result["error"] for result in refused)

    accepted_ids = {uuid.UUID(result["task_id"]) for result in accepted}
    async with engine.connect() as connection:
        stored = set(
            (
                await connection.scalars(
                    select(TaskRun.id).where(TaskRun.tenant_id == account.tenant_id)
                )
            ).all()
        )
    assert stored == accepted_ids  # the ledger holds the accepted runs and no other
    assert await wait_for_messages(vhost, len(accepted)) == len(accepted)

    rabbitmqctl("clear_policy", "-p", vhost, "cap")
    start_worker_on(
        start_role,
        task_env,
        own_broker,
        tmp_path / "worker",
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        WORKER_CONCURRENCY="20",
        TENANT_MAX_RUNS_IN_FLIGHT="0",
    )
    for result in accepted:
        run = await wait_for_run(client, result["task_id"])
        assert run["state"] == "succeeded", run
        assert run["result"] == {"message": items[result["index"]]["payload"]["message"]}
        assert run["attempts"] == 1

    again = await client.post(
        "/api/v1/tasks/runs", json={"runs": [items[result["index"]] for result in refused]}
    )
    assert again.status_code == 202, again.text
    for result in again.json()["runs"]:
        assert (await wait_for_run(client, result["task_id"]))["state"] == "succeeded"
