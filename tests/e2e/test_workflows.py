"""Workflow runs across processes: the gateway in process starts them, a real worker process
runs their steps; each step becomes due in the transaction that records its last parent's
outcome, and its payload is filled in from the workflow's input and its parents' results."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.models import TaskRun, WorkflowStep
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.processes import RunningRole
from tests.fixtures.tasks import start_worker_on

pytestmark = pytest.mark.e2e

FINAL = {"succeeded", "failed", "cancelled"}


async def ended(client: httpx.AsyncClient, run_id: str, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        view: dict[str, Any] = (await client.get(f"/api/v1/workflows/runs/{run_id}")).json()
        if view["state"] in FINAL:
            return view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.2)


async def register(client: httpx.AsyncClient, steps: list[dict[str, Any]]) -> str:
    name = f"wf-{uuid.uuid4().hex[:8]}"
    created = await client.post("/api/v1/workflows", json={"name": name, "steps": steps})
    assert created.status_code == 201, created.text
    return name


async def start(client: httpx.AsyncClient, name: str, given: Any, **headers: str) -> httpx.Response:
    return await client.post(
        f"/api/v1/workflows/{name}/runs", json={"input": given}, headers=headers
    )


@pytest.fixture
def worker(
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    own_broker: str,
    tmp_path: Path,
) -> RunningRole:
    return start_worker_on(
        start_role, task_env, own_broker, tmp_path / "worker", WORKER_CONCURRENCY="20"
    )


async def test_a_three_level_graph_with_a_map_of_100_passes_outputs_on(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole, engine: AsyncEngine
) -> None:
    client, _ = own_gateway
    name = await register(
        client,
        [
            {"name": "title", "task": "system.echo", "payload": {"message": {"$input": "/title"}}},
            {
                "name": "each",
                "task": "system.echo",
                "needs": ["title"],
                "map": {"$input": "/items"},
                "payload": {"message": {"$item": "/label"}},
            },
            {
                "name": "combine",
                "task": "system.echo",
                "needs": ["title", "each"],
                "payload": {"message": {"$step": "each", "pointer": "/99/message"}},
            },
        ],
    )
    items = [{"label": f"item-{index:03}"} for index in range(100)]
    started = await start(client, name, {"title": "Report", "items": items})
    assert started.status_code == 202, started.text
    assert started.headers["location"] == f"/api/v1/workflows/runs/{started.json()['id']}"
    assert [s["state"] for s in started.json()["steps"]] == ["running", "waiting", "waiting"]

    view = await ended(client, started.json()["id"])
    assert view["state"] == "succeeded", view
    title, each, combine = view["steps"]
    assert title["result"] == {"message": "Report"}
    assert (each["items"], each["items_left"], each["failed_items"]) == (100, 0, 0)
    assert each["state"] == "succeeded"
    assert len(each["runs"]) == 20  # the first of them, by item
    assert combine["result"] == {"message": "item-099"}  # the last item's result, in order

    async with engine.connect() as connection:
        steps = {
            row.name: row.id
            for row in await connection.execute(
                select(WorkflowStep.name, WorkflowStep.id).where(
                    WorkflowStep.workflow_run_id == uuid.UUID(view["id"])
                )
            )
        }
        mapped = (
            await connection.execute(
                select(TaskRun.item_index, TaskRun.result, TaskRun.finished_at)
                .where(TaskRun.workflow_step_id == steps["each"])
                .order_by(TaskRun.item_index)
            )
        ).all()
        [last] = (
            await connection.execute(
                select(TaskRun.created_at).where(TaskRun.workflow_step_id == steps["combine"])
            )
        ).all()
    # One run per item, each with its item; the combining step was made only after all ended.
    assert [(row.item_index, row.result) for row in mapped] == [
        (index, {"message": f"item-{index:03}"}) for index in range(100)
    ]
    assert last.created_at >= max(row.finished_at for row in mapped)


FAILING = {"task": "system.fail", "payload": {"retryable": False, "message": "broken on purpose"}}


@pytest.mark.parametrize("policy", ["fail_workflow", "continue", "compensate"])
async def test_a_failing_step_follows_its_policy(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole, policy: str
) -> None:
    client, _ = own_gateway
    failing: dict[str, Any] = {"name": "flaky", **FAILING, "on_failure": policy}
    if policy == "compensate":
        failing["compensation"] = {"task": "system.echo", "payload": {"message": "undo"}}
    name = await register(
        client,
        [
            {"name": "first", "task": "system.echo", "payload": {"message": "go"}},
            {**failing, "needs": ["first"]},
            {
                "name": "after",
                "task": "system.echo",
                "needs": ["flaky"],
                "payload": {"message": "after"},
            },
        ],
    )
    view = await ended(client, (await start(client, name, None)).json()["id"])
    states = {step["name"]: step["state"] for step in view["steps"]}
    flaky = view["steps"][1]
    assert flaky["state"] == "failed"
    assert "broken on purpose" in flaky["error"]
    if policy == "continue":
        assert view["state"] == "succeeded"
        assert states["after"] == "succeeded"
        return
    assert view["state"] == "failed"
    assert "step 'flaky' failed" in view["error"]
    assert states["after"] == "skipped"
    if policy == "compensate":
        compensations = [run for run in flaky["runs"] if run["item_index"] == -1]
        assert len(compensations) == 1
        deadline = time.monotonic() + 30
        while (await client.get(f"/api/v1/tasks/{compensations[0]['id']}")).json()[
            "state"
        ] != "succeeded":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        result = (await client.get(f"/api/v1/tasks/{compensations[0]['id']}")).json()["result"]
        assert result == {"message": "undo"}


async def test_a_step_whose_input_cannot_be_filled_in_fails_the_workflow_naming_it(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole
) -> None:
    client, _ = own_gateway
    name = await register(
        client,
        [{"name": "say", "task": "system.echo", "payload": {"message": {"$input": "/missing"}}}],
    )
    view = await ended(client, (await start(client, name, {"other": 1})).json()["id"])
    assert view["state"] == "failed"
    assert view["steps"][0]["state"] == "failed"
    assert "the input at '/missing'" in view["steps"][0]["error"]
    assert view["steps"][0]["runs"] == []  # nothing ran


async def test_an_idempotency_key_starts_one_run(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole
) -> None:
    client, _ = own_gateway
    name = await register(
        client, [{"name": "say", "task": "system.echo", "payload": {"message": "once"}}]
    )
    first = await start(client, name, None, **{"Idempotency-Key": "nightly-1"})
    again = await start(client, name, None, **{"Idempotency-Key": "nightly-1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert (await ended(client, first.json()["id"]))["state"] == "succeeded"


async def test_a_cancelled_workflow_stops_its_runs_and_skips_the_rest(
    own_gateway: tuple[httpx.AsyncClient, Account],
    worker: RunningRole,
    api_client: httpx.AsyncClient,
) -> None:
    client, _ = own_gateway
    name = await register(
        client,
        [
            {"name": "nap", "task": "system.sleep", "payload": {"seconds": 60}},
            {"name": "then", "task": "system.echo", "needs": ["nap"], "payload": {"message": "x"}},
        ],
    )
    run_id = (await start(client, name, None)).json()["id"]
    nap = (await client.get(f"/api/v1/workflows/runs/{run_id}")).json()["steps"][0]["runs"][0]
    deadline = time.monotonic() + 30
    while (await client.get(f"/api/v1/tasks/{nap['id']}")).json()["state"] != "started":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # Another tenant cannot see or cancel it.
    other = await sign_up(api_client, "Other")
    assert (
        await api_client.post(f"/api/v1/workflows/runs/{run_id}/cancel", headers=other.headers)
    ).status_code == 404

    cancelled = await client.post(f"/api/v1/workflows/runs/{run_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    view = cancelled.json()
    assert view["state"] == "cancelled"
    assert [step["state"] for step in view["steps"]] == ["cancelled", "skipped"]
    assert view["steps"][0]["runs"][0]["state"] == "cancelled"
    again = await client.post(f"/api/v1/workflows/runs/{run_id}/cancel")
    assert again.status_code == 409
    unknown = await client.post(f"/api/v1/workflows/runs/{uuid.uuid4()}/cancel")
    assert unknown.status_code == 404
    # The worker stopped the sleeping run at its next cancel poll, as any cancelled run.
    deadline = time.monotonic() + 30
    while "run cancelled while it ran" not in worker.stderr():
        assert time.monotonic() < deadline, worker.stderr()[-2000:]
        await asyncio.sleep(0.2)
    # Nothing of the cancelled workflow runs afterwards; a new one does.
    quick = await register(
        client, [{"name": "say", "task": "system.echo", "payload": {"message": "after"}}]
    )
    assert (await ended(client, (await start(client, quick, None)).json()["id"]))[
        "state"
    ] == "succeeded"
    final = (await client.get(f"/api/v1/workflows/runs/{run_id}")).json()
    assert [step["state"] for step in final["steps"]] == ["cancelled", "skipped"]
    assert final["steps"][1]["runs"] == []
    assert (await client.get(f"/api/v1/tasks/{nap['id']}")).json()["state"] == "cancelled"


async def runs_state(client: httpx.AsyncClient, run_id: str, state: str) -> None:
    deadline = time.monotonic() + 30
    while (await client.get(f"/api/v1/tasks/{run_id}")).json()["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} never {state}"
        await asyncio.sleep(0.1)


async def test_a_failed_map_item_fails_its_step_with_its_error_and_ends_the_running_rest(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole
) -> None:
    client, _ = own_gateway
    name = await register(
        client,
        [
            {"name": "nap", "task": "system.sleep", "payload": {"seconds": 60}},
            {
                "name": "each",
                "task": "system.fail",
                "map": {"$input": "/items"},
                "payload": {
                    "fail_attempts": {"$item": "/fail"},
                    "retryable": False,
                    "message": {"$item": "/say"},
                },
            },
            {
                "name": "after",
                "task": "system.echo",
                "needs": ["each"],
                "payload": {"message": "x"},
            },
        ],
    )
    items = [{"fail": 0, "say": "fine"}] * 3 + [{"fail": 1, "say": "item three broke"}]
    items += [{"fail": 0, "say": "fine"}] * 3  # successes after the failure, in item order
    view = await ended(client, (await start(client, name, {"items": items})).json()["id"])
    assert view["state"] == "failed"
    nap, each, after = view["steps"]
    # The failed run's error, whichever of the step's runs ended last.
    assert (each["state"], each["failed_items"], each["error"]) == ("failed", 1, "item three broke")
    assert view["error"] == "step 'each' failed: item three broke"
    # The step still running when the workflow failed ends with it, and so does its run.
    assert (nap["state"], after["state"]) == ("cancelled", "skipped")
    await runs_state(client, nap["runs"][0]["id"], "cancelled")
    final = (await client.get(f"/api/v1/workflows/runs/{view['id']}")).json()
    assert [step["state"] for step in final["steps"]] == ["cancelled", "failed", "skipped"]


@pytest.mark.timeout(300)  # the worker is killed twice on the way
async def test_a_step_run_cancelled_or_dead_lettered_on_its_own_ends_its_step(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole
) -> None:
    """A step's run can end outside its worker's outcome: cancelled over /tasks/{id}/cancel, or
    dead-lettered when it kills its worker each time. Either way its step fails and the
    workflow follows the step's policy (here: continue, then fail)."""
    client, _ = own_gateway
    name = await register(
        client,
        [
            {
                "name": "nap",
                "task": "system.sleep",
                "payload": {"seconds": 60},
                "on_failure": "continue",
            },
            {
                "name": "poison",
                "task": "system.fail",
                "needs": ["nap"],
                "payload": {"crash": True},
            },
            {
                "name": "never",
                "task": "system.echo",
                "needs": ["poison"],
                "payload": {"message": "x"},
            },
        ],
    )
    run_id = (await start(client, name, None)).json()["id"]
    nap = (await client.get(f"/api/v1/workflows/runs/{run_id}")).json()["steps"][0]["runs"][0]
    await runs_state(client, nap["id"], "started")
    assert (await client.post(f"/api/v1/tasks/{nap['id']}/cancel")).status_code == 200

    view = await ended(client, run_id, within=120)
    nap_step, poison, never = view["steps"]
    assert (nap_step["state"], nap_step["error"]) == ("failed", "its run was cancelled")
    assert poison["state"] == "failed"
    assert [run["state"] for run in poison["runs"]] == ["dead_lettered"]
    assert (view["state"], never["state"]) == ("failed", "skipped")
    assert view["error"].startswith("step 'poison' failed")


async def test_a_failed_workflow_replays_from_its_failed_step_and_keeps_what_succeeded(
    own_gateway: tuple[httpx.AsyncClient, Account],
    worker: RunningRole,
    redis_url: str,
    cache_namespace: str,
) -> None:
    client, _ = own_gateway
    fault = f"wf-fault-{uuid.uuid4().hex[:8]}"
    flag = f"{cache_namespace}:cache:faults:{fault}"
    name = await register(
        client,
        [
            {"name": "first", "task": "system.echo", "payload": {"message": "kept"}},
            {
                "name": "each",
                "task": "system.fail",
                "needs": ["first"],
                "map": {"$input": "/items"},
                "payload": {"fault_key": {"$item": ""}, "retryable": False, "message": "down"},
            },
            {
                "name": "after",
                "task": "system.echo",
                "needs": ["first", "each"],
                "payload": {"message": {"$step": "first", "pointer": "/message"}},
            },
        ],
    )
    store = Redis.from_url(redis_url)
    await store.set(flag, 1)
    try:
        items = ["fine-a", fault, "fine-b"]
        run_id = (await start(client, name, {"items": items})).json()["id"]
        failed = await ended(client, run_id)
    finally:
        await store.delete(flag)
        await store.aclose()
    assert failed["state"] == "failed"
    first, each, after = failed["steps"]
    assert (each["state"], each["error"], after["state"]) == ("failed", "down", "skipped")
    kept = first["runs"][0]["id"]

    replay = f"/api/v1/workflows/runs/{run_id}/steps"
    assert (await client.post(f"{replay}/after/replay")).status_code == 409  # skipped, not failed
    assert (await client.post(f"{replay}/first/replay")).status_code == 409  # it succeeded
    assert (await client.post(f"{replay}/nope/replay")).status_code == 404
    replayed = await client.post(f"{replay}/each/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["state"] == "running"
    assert [step["state"] for step in replayed.json()["steps"]] == [
        "succeeded",
        "running",
        "waiting",
    ]
    # Once running again it cannot be replayed a second time.
    assert (await client.post(f"{replay}/each/replay")).status_code == 409

    view = await ended(client, run_id)
    assert view["state"] == "succeeded", view
    first, each, after = view["steps"]
    assert first["runs"][0]["id"] == kept  # what succeeded is not run again
    assert (each["items"], each["failed_items"], each["error"]) == (3, 0, None)
    assert [run["state"] for run in each["runs"]] == ["succeeded"] * 3
    assert after["result"] == {"message": "kept"}
    events = await client.get("/api/v1/audit-events", params={"action": "workflow.replayed"})
    assert [event["details"] for event in events.json()["items"]] == [{"step": "each"}]


def streamed(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [
        json.loads(line.removeprefix("data:").strip())
        for line in response.text.splitlines()
        if line.startswith("data:")
    ]


async def test_a_workflow_runs_events_follow_its_graph_until_it_ends(
    own_gateway: tuple[httpx.AsyncClient, Account], worker: RunningRole
) -> None:
    client, _ = own_gateway
    name = await register(
        client,
        [
            {"name": "a", "task": "system.echo", "payload": {"message": "a"}},
            {"name": "b", "task": "system.sleep", "needs": ["a"], "payload": {"seconds": 1.5}},
            {"name": "c", "task": "system.echo", "needs": ["b"], "payload": {"message": "c"}},
        ],
    )
    run_id = (await start(client, name, None)).json()["id"]
    views = streamed(await client.get(f"/api/v1/workflows/runs/{run_id}/events", timeout=60))
    # The graph as it was, then as it changed, closing with the run's end.
    assert views[0]["id"] == run_id
    assert views[-1]["state"] == "succeeded"
    assert [step["state"] for step in views[-1]["steps"]] == ["succeeded"] * 3
    assert [view["state"] for view in views[:-1]] == ["running"] * (len(views) - 1)
    assert len(views) >= 3  # at least: started, b running (after a), ended
    rank = {"waiting": 0, "running": 1, "succeeded": 2}
    for earlier, later in itertools.pairwise(views):
        assert earlier != later  # an event only when something changed
        for before, after in zip(earlier["steps"], later["steps"], strict=True):
            assert rank[before["state"]] <= rank[after["state"]]
    # An ended run's stream is its graph once.
    again = streamed(await client.get(f"/api/v1/workflows/runs/{run_id}/events", timeout=10))
    assert again == [views[-1]]
    unknown = await client.get(f"/api/v1/workflows/runs/{uuid.uuid4()}/events")
    assert unknown.status_code == 404
