"""Starting workflow runs many at once: one transaction, each run with its input and key, a
key used before answered with its run, and every bad request refused whole, naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.models import TaskRun, WorkflowRun, WorkflowStep
from tests.fixtures.accounts import Account

WORKFLOWS = "/api/v1/workflows"


async def register(client: httpx.AsyncClient) -> str:
    name = f"greet-{uuid.uuid4().hex[:8]}"
    steps = [
        {"name": "hello", "task": "system.echo", "payload": {"message": {"$input": "/who"}}},
        {"name": "bye", "task": "system.echo", "needs": ["hello"], "payload": {"message": "bye"}},
    ]
    created = await client.post(WORKFLOWS, json={"name": name, "steps": steps})
    assert created.status_code == 201, created.text
    return name


async def stored(engine: AsyncEngine, tenant_id: uuid.UUID) -> tuple[int, list[Any]]:
    """The tenant's workflow runs, and the payloads of their first steps' runs (the session's
    worker may have run them and made the second steps due meanwhile)."""
    async with engine.connect() as connection:
        runs = await connection.scalar(
            select(func.count()).select_from(WorkflowRun).where(WorkflowRun.tenant_id == tenant_id)
        )
        payloads = (
            await connection.scalars(
                select(TaskRun.payload)
                .join(WorkflowStep, WorkflowStep.id == TaskRun.workflow_step_id)
                .where(WorkflowStep.tenant_id == tenant_id, WorkflowStep.name == "hello")
            )
        ).all()
    return int(runs or 0), sorted(payload["message"] for payload in payloads)


async def test_many_runs_start_at_once_and_a_used_key_answers_with_its_run(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    name = await register(tasks_api)
    body = {
        "runs": [
            {"input": {"who": "ada"}, "idempotency_key": "ada-1"},
            {"input": {"who": "grace"}},
            {"input": {"who": "linus"}, "idempotency_key": "linus-1"},
        ]
    }
    first = await tasks_api.post(f"{WORKFLOWS}/{name}/runs/bulk", json=body)
    assert first.status_code == 202, first.text
    items = first.json()["items"]
    assert [(item["index"], item["state"], item["created"]) for item in items] == [
        (0, "running", True),
        (1, "running", True),
        (2, "running", True),
    ]
    for item in items:
        view = (await tasks_api.get(f"{WORKFLOWS}/runs/{item['id']}")).json()
        assert view["workflow"] == name
    assert (await stored(engine, tasks_account.tenant_id)) == (3, ["ada", "grace", "linus"])

    again = (await tasks_api.post(f"{WORKFLOWS}/{name}/runs/bulk", json=body)).json()["items"]
    # The keyed runs are the same ones; the run without a key is a new one.
    assert [item["created"] for item in again] == [False, True, False]
    assert [again[0]["id"], again[2]["id"]] == [items[0]["id"], items[2]["id"]]
    assert again[1]["id"] != items[1]["id"]
    runs, payloads = await stored(engine, tasks_account.tenant_id)
    assert (runs, payloads) == (4, ["ada", "grace", "grace", "linus"])


async def test_a_bad_bulk_start_is_refused_whole_naming_the_field(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    name = await register(tasks_api)
    twice = {"runs": [{"idempotency_key": "k"}, {"input": 1}, {"idempotency_key": "k"}]}
    too_many = {"runs": [{"input": index} for index in range(101)]}
    for body, field in (
        (twice, "body.runs.2.idempotency_key"),
        (too_many, "body.runs"),
        ({"runs": []}, "body.runs"),
        ({"runs": [{"inputs": 1}]}, "body.runs.0.inputs"),
        ({"runs": [{}], "version": 0}, "body.version"),
    ):
        answer = await tasks_api.post(f"{WORKFLOWS}/{name}/runs/bulk", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert [error["field"] for error in answer.json()["errors"]] == [field]
    unknown = await tasks_api.post(f"{WORKFLOWS}/no-such-flow/runs/bulk", json={"runs": [{}]})
    assert unknown.status_code == 404
    assert await stored(engine, tasks_account.tenant_id) == (0, [])


async def test_workflow_runs_are_listed_newest_first_page_by_page_and_filtered(
    tasks_api: httpx.AsyncClient,
) -> None:
    name, other = await register(tasks_api), await register(tasks_api)
    started = await tasks_api.post(
        f"{WORKFLOWS}/{name}/runs/bulk",
        json={"runs": [{"input": {"who": str(n)}} for n in range(3)]},
    )
    ids = [item["id"] for item in started.json()["items"]]
    await tasks_api.post(f"{WORKFLOWS}/{other}/runs", json={"input": {"who": "x"}})

    first = (await tasks_api.get(f"{WORKFLOWS}/runs", params={"workflow": name, "limit": 2})).json()
    second = (
        await tasks_api.get(
            f"{WORKFLOWS}/runs",
            params={"workflow": name, "limit": 2, "cursor": first["next_cursor"]},
        )
    ).json()
    listed = first["items"] + second["items"]
    assert second["next_cursor"] is None
    assert sorted(item["id"] for item in listed) == sorted(ids)
    assert [item["created_at"] for item in listed] == sorted(
        (item["created_at"] for item in listed), reverse=True
    )
    assert {(item["workflow"], item["version"]) for item in listed} == {(name, 1)}
    everything = (await tasks_api.get(f"{WORKFLOWS}/runs")).json()["items"]
    assert {item["workflow"] for item in everything} == {name, other}
    failed = (await tasks_api.get(f"{WORKFLOWS}/runs", params={"state": "failed"})).json()
    assert failed["items"] == []
    for params, field in (({"state": "bogus"}, "query.state"), ({"cursor": "x"}, "query.cursor")):
        answer = await tasks_api.get(f"{WORKFLOWS}/runs", params=params)
        assert answer.status_code == 422
        assert [error["field"] for error in answer.json()["errors"]] == [field]


async def test_no_workflow_may_be_named_runs(tasks_api: httpx.AsyncClient) -> None:
    steps = [{"name": "a", "task": "system.echo", "payload": {"message": "a"}}]
    answer = await tasks_api.post(WORKFLOWS, json={"name": "runs", "steps": steps})
    assert answer.status_code == 422
    assert [error["field"] for error in answer.json()["errors"]] == ["body.name"]
