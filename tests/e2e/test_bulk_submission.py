"""A bulk submission the broker refuses part of, on a real RabbitMQ: the answer names the
runs accepted and the runs refused, the ledger holds exactly the accepted ones, the queue
holds exactly their messages, and every accepted run completes on a real worker.

The broker refuses for real: a policy caps the `llm` queue at one message
(`overflow: reject-publish`) and one is there already, so RabbitMQ nacks the messages of the
burst bound for it (all but the first few: a quorum queue enforces its length a moment
late), and takes every one for `default`."""

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
from switchyard.platform.publisher import RunMessage, RunPublisher
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, wait_for_run

pytestmark = pytest.mark.e2e

RUNS = 1000  # the most one request may carry: half for `default`, half for the full `llm`


def rabbitmqctl(*args: str) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is needed to cap a queue with a policy")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def vhost(own_broker: str) -> str:
    name = urlsplit(own_broker).path.lstrip("/")
    policy = json.dumps({"max-length": 1, "overflow": "reject-publish"})
    rabbitmqctl("set_policy", "-p", name, "--apply-to", "queues", "full", "^llm$", policy)
    return name


def queued_messages(vhost: str, queue: str) -> int:
    for line in rabbitmqctl("list_queues", "-q", "-p", vhost, "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


async def wait_for_messages(vhost: str, queue: str, expected: int, within: float = 10.0) -> int:
    """The queue's message count once it reads `expected` (the count lags a publish)."""
    deadline = time.monotonic() + within
    count = queued_messages(vhost, queue)
    while count != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        count = queued_messages(vhost, queue)
    return count


@pytest.fixture
async def gateway(
    make_settings: SettingsFactory, own_broker: str, vhost: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Account, RunPublisher]]:
    """The gateway in process (its client, a tenant's owner signed in, its publisher)."""
    settings = make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        fair_share=False,
        rate_limits_enabled=False,
    )
    app = create_app(settings)
    async with running(app) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        yield client, account, app.state.gateway.broker.publisher


async def test_a_burst_the_broker_refuses_in_part_leaves_ledger_and_queue_agreeing(
    gateway: tuple[httpx.AsyncClient, Account, RunPublisher],
    vhost: str,
    own_broker: str,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, account, publisher = gateway
    filler = RunMessage(str(uuid.uuid4()), "system.echo", "llm", None, str(account.tenant_id))
    assert await publisher.publish_many([filler]) == [True]
    assert await wait_for_messages(vhost, "llm", 1) == 1  # `llm` is full from here on

    items = [
        {"task": "system.echo", "payload": {"message": f"run {i}"}, "queue": queue}
        for i, queue in enumerate(["default", "llm"] * (RUNS // 2))
    ]
    response = await client.post("/api/v1/tasks/runs", json={"runs": items})
    assert response.status_code == 207, response.text
    body = response.json()
    results = body["runs"]
    accepted = [result for result in results if result["accepted"]]
    refused = [result for result in results if not result["accepted"]]
    assert {result["index"] for result in accepted} >= set(range(0, RUNS, 2))  # all `default`
    assert refused, "the full queue refused nothing"
    assert {result["index"] % 2 for result in refused} == {1}  # only `llm` ones
    assert (body["accepted"], body["refused"]) == (len(accepted), len(refused))
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
    llm_accepted = len(accepted) - RUNS // 2
    assert await wait_for_messages(vhost, "default", RUNS // 2) == RUNS // 2
    assert await wait_for_messages(vhost, "llm", 1 + llm_accepted) == 1 + llm_accepted

    rabbitmqctl("clear_policy", "-p", vhost, "full")
    start_worker_on(
        start_role,
        task_env,
        own_broker,
        tmp_path / "worker",
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        WORKER_CONCURRENCY="20",
        WORKER_QUEUES="default,llm",
        FAIR_SHARE="false",
    )
    deadline = time.monotonic() + 120
    while (done := await succeeded(engine, account.tenant_id)) != accepted_ids:
        assert time.monotonic() < deadline, f"{len(done)} of {len(accepted_ids)} succeeded"
        await asyncio.sleep(0.5)
    for result in accepted[:: RUNS // 20]:  # each ran its own payload
        run = (await client.get(f"/api/v1/tasks/{result['task_id']}")).json()
        assert run["result"] == {"message": items[result["index"]]["payload"]["message"]}
        assert run["attempts"] == 1

    again = await client.post(
        "/api/v1/tasks/runs", json={"runs": [items[result["index"]] for result in refused]}
    )
    assert again.status_code == 202, again.text
    for result in again.json()["runs"][:10]:
        assert (await wait_for_run(client, result["task_id"]))["state"] == "succeeded"


async def succeeded(engine: AsyncEngine, tenant_id: uuid.UUID) -> set[uuid.UUID]:
    async with engine.connect() as connection:
        return set(
            (
                await connection.scalars(
                    select(TaskRun.id).where(
                        TaskRun.tenant_id == tenant_id, TaskRun.state == "succeeded"
                    )
                )
            ).all()
        )
