"""Runs through a real RabbitMQ, worker processes and the ledger."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.fixtures.processes import RunningRole, healthcheck
from tests.fixtures.tasks import (
    DELIVERY_LIMIT,
    submit,
    unique,
    wait_for_dead_letter,
    wait_for_run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("default_worker")]


async def test_echo_runs_and_its_result_is_recorded(tasks_api: httpx.AsyncClient) -> None:
    response = await tasks_api.post(
        "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "hi", "n": 1}}
    )
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["state"] == "queued"
    assert response.headers["location"] == f"/api/v1/tasks/{accepted['task_id']}"
    run = await wait_for_run(tasks_api, accepted["task_id"])
    assert run["state"] == "succeeded"
    assert run["result"] == {"message": "hi", "n": 1}
    assert run["attempts"] == 1
    assert run["error"] is None
    assert run["request_id"] == response.headers["x-request-id"]
    assert run["submitted_at"] <= run["started_at"] <= run["finished_at"]


async def test_retries_then_success(tasks_api: httpx.AsyncClient) -> None:
    task_id = await submit(tasks_api, "system.fail", {"fail_attempts": 2})
    run = await wait_for_run(tasks_api, task_id)
    assert run["state"] == "succeeded"
    assert run["attempts"] == 3
    assert run["result"] == {"attempt": 3}


async def test_exhausted_retries_are_dead_lettered_and_replay_succeeds_once_fixed(
    tasks_api: httpx.AsyncClient, redis_url: str, cache_namespace: str
) -> None:
    fault = unique("fault")
    redis = Redis.from_url(redis_url)
    await redis.set(f"{cache_namespace}:cache:faults:{fault}", 1)
    try:
        task_id = await submit(tasks_api, "system.fail", {"fault_key": fault, "message": "boom"})
        run = await wait_for_run(tasks_api, task_id)
        assert run["state"] == "failed"
        assert run["attempts"] == 3
        assert run["error"] == {"type": "TransientFaultError", "message": "boom"}
        letter = await wait_for_dead_letter(tasks_api, task_id)
        assert letter["reason"] == "rejected"
        assert letter["task"] == "system.fail"
        assert letter["queue"] == "default"
        assert letter["attempts"] == 3
        assert letter["last_error"] == "TransientFaultError: boom"
        assert letter["payload"] == {"fault_key": fault, "message": "boom"}
    finally:
        await redis.delete(f"{cache_namespace}:cache:faults:{fault}")
        await redis.aclose()

    replay = await tasks_api.post(f"/api/v1/tasks/dead-letters/{letter['id']}/replay")
    assert replay.status_code == 202
    replayed = await wait_for_run(tasks_api, replay.json()["task_id"])
    assert replayed["state"] == "succeeded"
    assert replayed["replay_of"] == task_id
    letters = (await tasks_api.get("/api/v1/tasks/dead-letters")).json()
    assert (
        next(i for i in letters if i["id"] == letter["id"])["replayed_task_id"]
        == (replay.json()["task_id"])
    )
    deleted = await tasks_api.delete(f"/api/v1/tasks/dead-letters/{letter['id']}")
    assert deleted.status_code == 204
    assert (await tasks_api.delete(f"/api/v1/tasks/dead-letters/{letter['id']}")).status_code == 404


async def test_non_retryable_error_is_dead_lettered_after_one_attempt(
    tasks_api: httpx.AsyncClient,
) -> None:
    task_id = await submit(tasks_api, "system.fail", {"retryable": False, "message": "bad"})
    run = await wait_for_run(tasks_api, task_id)
    assert run["state"] == "failed"
    assert run["attempts"] == 1
    assert run["error"]["type"] == "ValueError"
    assert (await wait_for_dead_letter(tasks_api, task_id))["reason"] == "rejected"


async def test_a_task_that_kills_its_worker_is_dead_lettered_and_later_runs_still_run(
    tasks_api: httpx.AsyncClient,
) -> None:
    poison = await submit(tasks_api, "system.fail", {"crash": True})
    after = await submit(tasks_api, "system.echo", {"message": "still alive"})
    run = await wait_for_run(tasks_api, poison, within=90)
    assert run["state"] == "dead_lettered"
    letter = await wait_for_dead_letter(tasks_api, poison)
    assert letter["reason"] == "delivery_limit"
    assert run["attempts"] == DELIVERY_LIMIT  # deliveries, as TASK_DELIVERY_LIMIT says
    assert (await wait_for_run(tasks_api, after))["state"] == "succeeded"


async def test_killed_worker_mid_task_is_redelivered_and_completes(
    tasks_api: httpx.AsyncClient, start_llm_worker: Callable[[], RunningRole]
) -> None:
    first = start_llm_worker()
    task_id = await submit(tasks_api, "system.sleep", {"seconds": 3}, queue="llm")
    started = await wait_for_run(tasks_api, task_id, ("started",))
    assert started["attempts"] == 1
    first.kill_all()
    assert first.leftovers(timeout=5) == []
    start_llm_worker()
    run = await wait_for_run(tasks_api, task_id, within=90)
    assert run["state"] == "succeeded"
    assert run["attempts"] == 2
    assert run["result"] == {"slept": 3.0}


async def test_delay_is_held_by_the_broker_across_a_worker_restart(
    tasks_api: httpx.AsyncClient, start_llm_worker: Callable[[], RunningRole]
) -> None:
    worker = start_llm_worker()
    response = await tasks_api.post(
        "/api/v1/tasks/run",
        json={
            "task": "system.echo",
            "payload": {"message": "later"},
            "countdown": 3,
            "queue": "llm",
        },
    )
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["state"] == "scheduled"
    assert accepted["eta"] is not None
    assert worker.stop(signal.SIGTERM) == 0
    await asyncio.sleep(1)
    assert (await tasks_api.get(f"/api/v1/tasks/{accepted['task_id']}")).json()["state"] == (
        "scheduled"
    )
    start_llm_worker()
    run = await wait_for_run(tasks_api, accepted["task_id"], within=60)
    assert run["state"] == "succeeded"
    assert datetime.fromisoformat(run["started_at"]) >= datetime.fromisoformat(accepted["eta"])


async def test_idempotency_key_returns_the_same_run_or_409(tasks_api: httpx.AsyncClient) -> None:
    key = unique("key")
    body = {"task": "system.echo", "payload": {"message": "once"}}
    first = await tasks_api.post("/api/v1/tasks/run", json=body, headers={"Idempotency-Key": key})
    again = await tasks_api.post("/api/v1/tasks/run", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    other = await tasks_api.post(
        "/api/v1/tasks/run",
        json={"task": "system.echo", "payload": {"message": "twice"}},
        headers={"Idempotency-Key": key},
    )
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    runs = (
        await tasks_api.get("/api/v1/tasks/", params={"task": "system.echo", "limit": 200})
    ).json()
    assert sum(1 for item in runs["items"] if item["idempotency_key"] == key) == 1


async def test_cancelled_run_never_executes_and_cancel_twice_is_409(
    tasks_api: httpx.AsyncClient,
) -> None:
    task_id = await submit(tasks_api, "system.echo", {"message": "never"}, countdown=2)
    cancelled = await tasks_api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = await tasks_api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert again.status_code == 409
    await asyncio.sleep(4)
    run = (await tasks_api.get(f"/api/v1/tasks/{task_id}")).json()
    assert run["state"] == "cancelled"
    assert run["started_at"] is None
    assert run["attempts"] == 0


async def test_cancelling_a_started_run_stops_it(tasks_api: httpx.AsyncClient) -> None:
    task_id = await submit(tasks_api, "system.sleep", {"seconds": 20})
    await wait_for_run(tasks_api, task_id, ("started",))
    assert (await tasks_api.post(f"/api/v1/tasks/{task_id}/cancel")).status_code == 200
    await asyncio.sleep(2)
    run = (await tasks_api.get(f"/api/v1/tasks/{task_id}")).json()
    assert run["state"] == "cancelled"
    assert run["result"] is None
    follow_up = await submit(tasks_api, "system.echo", {"message": "worker still serves"})
    assert (await wait_for_run(tasks_api, follow_up))["state"] == "succeeded"


async def test_events_stream_current_state_then_every_change_in_order(
    tasks_api: httpx.AsyncClient,
) -> None:
    task_id = await submit(tasks_api, "system.fail", {"fail_attempts": 1}, countdown=3)
    response = await tasks_api.get(f"/api/v1/tasks/{task_id}/events", timeout=60)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data:").strip())
        for line in response.text.splitlines()
        if line.startswith("data:")
    ]
    states = [(event["state"], event["attempts"]) for event in events]
    assert states == [
        ("scheduled", 0),
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("succeeded", 2),
    ]


def test_worker_healthcheck_pings_its_own_node(default_worker: RunningRole) -> None:
    result = healthcheck("worker", default_worker.env)
    assert result.returncode == 0, result.stderr
    assert "answered" in result.stdout


def test_worker_healthcheck_fails_without_a_heartbeat(
    default_worker: RunningRole, tmp_path: Path
) -> None:
    result = healthcheck("worker", {**default_worker.env, "VAR_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "no heartbeat" in result.stderr
