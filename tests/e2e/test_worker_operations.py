"""A real worker role: its metrics across worker processes, log correlation, shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.fixtures.accounts import Account
from tests.fixtures.processes import RunningRole
from tests.fixtures.scrape import label_values, metric_value
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import (
    start_worker_on,
    submit,
    wait_for_dead_letter,
    wait_for_run,
)

pytestmark = pytest.mark.e2e

TASKS = "switchyard_worker_tasks_total"


def scrape(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return response.text


async def eventually(check: Callable[[], Any], within: float = 30.0) -> Any:
    """Poll `check` until it returns a truthy value (which is returned)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_worker_metrics_count_every_outcome_across_worker_processes(
    own_gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, _ = own_gateway
    port = free_port()
    worker = start_worker_on(
        start_role,
        task_env,
        own_broker,
        tmp_path / "worker",
        WORKER_PROCESSES="2",
        WORKER_CONCURRENCY="1",
        WORKER_METRICS_PORT=str(port),
        METRICS_SAMPLE_SECONDS="0.3",
    )
    # Two worker processes run these; the supervisor serves their merged counters.
    children = psutil.Process(worker.process.pid).children()
    assert len(children) == 2

    # Queue depth: runs wait while both processes' one slot each is busy sleeping.
    sleepers = [await submit(client, "system.sleep", {"seconds": 3}) for _ in range(2)]
    waiting = [await submit(client, "system.echo", {"message": f"m{i}"}) for i in range(4)]
    depth = await eventually(
        lambda: metric_value(scrape(port), "switchyard_queue_depth", queue="default"), 10
    )
    assert depth >= 1
    busy = await eventually(
        lambda: metric_value(scrape(port), "switchyard_worker_runs_in_flight") == 2, 10
    )
    assert busy, scrape(port)
    during = scrape(port)
    assert metric_value(during, "switchyard_worker_slots_free") == 0
    pids = label_values(during, "switchyard_worker_loop_lag_seconds", "pid")
    assert pids == {str(child.pid) for child in children}

    flaky = await submit(client, "system.fail", {"fail_attempts": 1})
    broken = await submit(client, "system.fail", {"retryable": False})
    for task_id in [*sleepers, *waiting, flaky]:
        assert (await wait_for_run(client, task_id))["state"] == "succeeded"
    assert (await wait_for_run(client, broken))["state"] == "failed"
    await wait_for_dead_letter(client, broken)

    def settled() -> str | None:
        text = scrape(port)
        archived = metric_value(text, "switchyard_dead_letter_archive_size")
        counted = metric_value(text, TASKS, task="system.fail", event="dead_lettered")
        drained = metric_value(text, "switchyard_queue_depth", queue="default") == 0
        return text if archived >= 1 and counted == 1 and drained else None

    text = await eventually(settled)
    assert text, scrape(port)

    def count(task: str, event: str) -> float:
        return metric_value(text, TASKS, task=task, event=event)

    assert count("system.echo", "received") == 4
    assert count("system.echo", "started") == 4
    assert count("system.echo", "succeeded") == 4
    assert count("system.sleep", "succeeded") == 2
    # system.fail: the flaky run failed once, was retried (a second delivery) and succeeded;
    # the broken one failed for good and was dead-lettered.
    assert count("system.fail", "received") == 3
    assert count("system.fail", "retried") == 1
    assert count("system.fail", "succeeded") == 1
    assert count("system.fail", "failed") == 1
    assert count("system.fail", "dead_lettered") == 1
    duration = "switchyard_worker_task_duration_seconds"
    assert metric_value(text, f"{duration}_count", task="system.sleep") == 2
    assert metric_value(text, f"{duration}_sum", task="system.sleep") >= 6
    assert metric_value(text, "switchyard_worker_runs_in_flight") == 0
    assert metric_value(text, "switchyard_worker_slots_free") == 2
    assert label_values(text, "switchyard_queue_depth", "queue") == {
        "default",
        "llm",
        "switchyard.dead-letters",
    }
    assert metric_value(text, "switchyard_queue_depth", queue="switchyard.dead-letters") == 0


async def test_the_request_id_of_the_submitting_call_follows_the_run_into_every_log_line(
    own_gateway: tuple[httpx.AsyncClient, Account],
    own_broker: str,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    client, account = own_gateway
    worker = start_worker_on(start_role, task_env, own_broker, tmp_path / "worker")
    request_id = "corr-" + tmp_path.name[-12:]
    accepted = await client.post(
        "/api/v1/tasks/run",
        json={"task": "system.fail", "payload": {"fail_attempts": 1}},
        headers={"X-Request-ID": request_id},
    )
    assert accepted.status_code == 202
    task_id = accepted.json()["task_id"]
    run = await wait_for_run(client, task_id)
    assert run["state"] == "succeeded"
    assert run["attempts"] == 2
    assert run["request_id"] == request_id  # the ledger keeps it
    deadline = time.monotonic() + 30  # the start-up line comes once its probes answered
    while "backing services at start" not in worker.stderr():
        assert time.monotonic() < deadline, "the worker logged no start-up line"
        await asyncio.sleep(0.1)

    worker.stop(signal.SIGTERM)
    lines = [line for line in worker.stderr().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    # Celery prints one notice from its signal handler (where logging is unsafe); nothing else
    # reaches stdout, the startup banner included.
    printed = [line for line in worker.stdout().splitlines() if line.strip()]
    assert printed in (["worker: Warm shutdown (MainProcess)"], [])
    assert {record.get("service_type") for record in records} == {"worker"}
    [started] = [r for r in records if r["message"].startswith("backing services at start")]
    assert {"postgres", "redis", "rabbitmq", "disk", "memory"} <= set(started["reached"])
    of_run = [record for record in records if record.get("task_id") == task_id]
    messages = [record["message"] for record in of_run]
    # Received twice (the retry is a second delivery), failed once, then succeeded; Celery's
    # own lines about the run count too.
    assert messages.count("task received") == 2
    assert any(message.startswith("attempt failed") for message in messages)
    assert "run succeeded" in messages
    assert any(record["logger"].startswith("celery") for record in of_run)
    for record in of_run:
        assert record.get("request_id") == request_id, record
        assert record.get("tenant_id") == str(account.tenant_id), record
