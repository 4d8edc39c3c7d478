"""Messages the worker did not get from Switchyard, deliveries it skips, and cancels: each is
handled once and logged for what it is."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.platform.broker import Broker
from switchyard.settings import Settings
from tests.fixtures.processes import RunningRole, untraced_env
from tests.fixtures.tasks import publish_run, submit

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def broker(task_settings: Settings) -> Iterator[Broker]:
    created = Broker.create(task_settings)
    assert created is not None
    yield created
    created.close()


async def _letter(engine: AsyncEngine, message_id: str, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT tenant_id, task, reason, last_error, payload, headers "
                        "FROM dead_letters WHERE headers->>'message_id' = :id"
                    ),
                    {"id": message_id},
                )
            ).one_or_none()
        if row is not None:
            return row
        await asyncio.sleep(0.2)
    raise AssertionError(f"no dead letter for message {message_id}")


def _log_lines(worker: RunningRole, needle: str) -> list[str]:
    return [line for line in worker.stderr().splitlines() if needle in line]


async def _until_logged(
    worker: RunningRole, needle: str, *also: str, within: float = 30
) -> list[str]:
    """The worker's log lines that hold `needle` (and each of `also`), once there are some:
    the session's worker logs for every test, so a line of another run does not count."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        lines = [line for line in _log_lines(worker, needle) if all(a in line for a in also)]
        if lines:
            return lines
        await asyncio.sleep(0.2)
    raise AssertionError(f"{(needle, *also)!r} never logged")


async def test_a_message_not_sent_by_switchyard_is_refused_once_and_archived_raw(
    default_worker: RunningRole, broker: Broker, engine: AsyncEngine
) -> None:
    sent = await asyncio.to_thread(
        broker.celery.send_task,
        "system.echo",
        args=["hello", 42],
        kwargs={"shout": True},
        queue="default",
        routing_key="default",
    )
    letter = await _letter(engine, sent.id)
    assert letter.reason == "foreign_message"
    assert letter.task == "system.echo"
    assert letter.payload is None  # nothing to replay
    assert "not sent by Switchyard" in letter.last_error
    assert letter.headers["body"] == {"args": ["hello", 42], "kwargs": {"shout": True}}
    refused = await _until_logged(default_worker, sent.id)
    assert any("message refused: not sent by Switchyard" in line for line in refused)
    assert not any("succeeded" in line for line in refused)


async def test_a_delivery_for_an_unknown_run_is_ignored_not_reported_as_a_success(
    default_worker: RunningRole, broker: Broker
) -> None:
    unknown = str(uuid.uuid4())
    await publish_run(broker, unknown, "system.echo", "default", None, str(uuid.uuid4()))
    lines = await _until_logged(default_worker, f"[{unknown}] ignored")
    assert lines
    assert _log_lines(default_worker, f"[{unknown}] succeeded") == []


async def test_cancelling_runs_logs_no_backend_warning(
    default_worker: RunningRole, tasks_api: httpx.AsyncClient
) -> None:
    task_id = await submit(tasks_api, "system.echo", {"message": "later"}, countdown=30)
    cancelled = await tasks_api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    running = await submit(tasks_api, "system.sleep", {"seconds": 5})
    deadline = time.monotonic() + 30
    while (await tasks_api.get(f"/api/v1/tasks/{running}")).json()["state"] != "started":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await tasks_api.post(f"/api/v1/tasks/{running}/cancel")).status_code == 200
    # The started one is stopped by the worker that holds it; neither makes a warning.
    stopped = await _until_logged(default_worker, "run cancelled while it ran", running)
    assert stopped
    assert (await tasks_api.get(f"/api/v1/tasks/{running}")).json()["state"] == "cancelled"
    for run in (task_id, running):
        lines = _log_lines(default_worker, run)
        assert not [line for line in lines if '"level": "WARNING"' in line or "ERROR" in line]
    assert _log_lines(default_worker, "as revoked in backend") == []


def test_the_worker_answers_celerys_own_inspect_ping(
    default_worker: RunningRole, task_settings: Settings
) -> None:
    """Celery's command line, not ours: `celery inspect ping` reaches the worker's node over
    the broker's control exchange and gets its pong (the image's healthcheck pings it so too)."""
    assert task_settings.celery_broker_url is not None
    ready = _until_ready(default_worker)
    answered = subprocess.run(
        [
            str(Path(sys.executable).with_name("celery")),
            "--broker",
            task_settings.celery_broker_url.get_secret_value(),
            "inspect",
            "ping",
            "--destination",
            ready,
            "--timeout",
            "10",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=untraced_env(),
    )
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout) == {ready: {"ok": "pong"}}


def _until_ready(worker: RunningRole, within: float = 30) -> str:
    """The worker's node name, from its "… ready." line."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in _log_lines(worker, " ready."):
            message = str(json.loads(line)["message"])
            if message.endswith(" ready."):
                return message.removesuffix(" ready.")
        time.sleep(0.2)
    raise AssertionError("the worker never said it was ready")
