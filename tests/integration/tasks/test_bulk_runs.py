"""POST /api/v1/tasks/runs: many runs in one request, all checked before any is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.db.models import TaskRun, Tenant
from switchyard.settings import Settings
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import published_at, unique

PROBLEM = "application/problem+json"


async def tenant_runs(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[uuid.UUID, TaskRun]:
    async with async_sessionmaker(engine)() as session:
        runs = (await session.scalars(select(TaskRun).where(TaskRun.tenant_id == tenant_id))).all()
    return {run.id: run for run in runs}


def echo(message: str, **extra: Any) -> dict[str, Any]:
    return {"task": "system.echo", "payload": {"message": message}, **extra}


async def test_runs_are_stored_published_and_answered_in_request_order(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    name = unique("nightly")
    registered = await tasks_api.post(
        "/api/v1/tasks/register",
        json={"name": name, "task": "system.echo", "payload": {"message": "from definition"}},
    )
    assert registered.status_code == 201, registered.text
    eta = datetime.now(UTC) + timedelta(hours=1)
    items = [
        echo("first"),
        {"definition": name},
        echo("later", countdown=600),
        echo("at", eta=eta.isoformat()),
        echo("keyed", idempotency_key=unique("key")),
    ]
    response = await tasks_api.post("/api/v1/tasks/runs", json={"runs": items})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 5
    assert body["refused"] == 0
    results = body["runs"]
    assert [result["index"] for result in results] == [0, 1, 2, 3, 4]
    assert all(result["accepted"] and not result["duplicate"] for result in results)
    assert [result["state"] for result in results] == [
        "queued",
        "queued",
        "scheduled",
        "scheduled",
        "queued",
    ]
    stored = await tenant_runs(engine, tasks_account.tenant_id)
    ids = [uuid.UUID(result["task_id"]) for result in results]
    assert set(ids) == set(stored)
    assert [stored[run_id].payload for run_id in ids] == [
        {"message": "first"},
        {"message": "from definition"},
        {"message": "later"},
        {"message": "at"},
        {"message": "keyed"},
    ]
    assert stored[ids[1]].definition_id == uuid.UUID(registered.json()["id"])
    assert stored[ids[3]].eta == eta.replace(microsecond=eta.microsecond)
    assert stored[ids[4]].idempotency_key == items[4]["idempotency_key"]
    assert {stored[run_id].submitted_by for run_id in ids} == {f"user:{tasks_account.user_id}"}
    for run_id in ids:  # every message was confirmed, and the marks say so
        assert await published_at(engine, run_id) is not None


async def test_one_invalid_run_accepts_nothing_and_names_each_failing_field_by_index(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    items = [
        echo("fine"),
        {"task": "system.echo", "payload": {"message": 7}},
        {"task": "no.such-task"},
        {"definition": "no-such-definition"},
        echo("too late", countdown=10**9),
        echo("fine too", queue="nowhere"),
        {"task": "system.echo", "payload": {}, "surprise": 1},
    ]
    response = await tasks_api.post("/api/v1/tasks/runs", json={"runs": items})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    fields = {error["field"] for error in response.json()["errors"]}
    assert "body.runs.6.surprise" in fields  # the body's shape is checked first, alone
    assert await tenant_runs(engine, tasks_account.tenant_id) == {}

    response = await tasks_api.post("/api/v1/tasks/runs", json={"runs": items[:6]})
    assert response.status_code == 422
    assert {error["field"] for error in response.json()["errors"]} == {
        "body.runs.1.payload.message",
        "body.runs.2.task",
        "body.runs.3.definition",
        "body.runs.4.countdown",
        "body.runs.5.queue",
    }
    assert "5 of the 6 runs are invalid; none was accepted" in response.json()["detail"]
    assert await tenant_runs(engine, tasks_account.tenant_id) == {}


async def test_idempotency_keys_name_runs_across_requests_and_conflict_within_one(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    key, other = unique("key"), unique("key")
    single = await tasks_api.post(
        "/api/v1/tasks/run", json=echo("once"), headers={"Idempotency-Key": key}
    )
    assert single.status_code == 202
    items = [echo("once", idempotency_key=key), echo("new", idempotency_key=other)]
    first = await tasks_api.post("/api/v1/tasks/runs", json={"runs": items})
    assert first.status_code == 202, first.text
    results = first.json()["runs"]
    assert results[0]["duplicate"] is True
    assert results[0]["task_id"] == single.json()["task_id"]
    assert results[1]["duplicate"] is False
    again = await tasks_api.post("/api/v1/tasks/runs", json={"runs": items})
    assert [r["task_id"] for r in again.json()["runs"]] == [r["task_id"] for r in results]
    assert all(r["duplicate"] for r in again.json()["runs"])
    assert len(await tenant_runs(engine, tasks_account.tenant_id)) == 2

    twice = await tasks_api.post(
        "/api/v1/tasks/runs",
        json={"runs": [echo("a", idempotency_key="k1"), echo("b", idempotency_key="k1")]},
    )
    assert twice.status_code == 422
    assert [error["field"] for error in twice.json()["errors"]] == ["body.runs.1.idempotency_key"]
    changed = await tasks_api.post(
        "/api/v1/tasks/runs",
        json={"runs": [echo("fresh"), echo("not once", idempotency_key=key)]},
    )
    assert changed.status_code == 409
    assert "runs[1]" in changed.json()["detail"]
    assert len(await tenant_runs(engine, tasks_account.tenant_id)) == 2


async def test_size_and_rate_limit_count_runs_not_requests(
    make_settings: SettingsFactory, broker_url: str, engine: AsyncEngine
) -> None:
    settings: Settings = make_settings(
        celery_broker_url=broker_url,
        task_delivery_limit=2,
        task_bulk_max_runs=6,
        rate_limit_task_runs="5/minute",
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        too_many = await client.post(
            "/api/v1/tasks/runs", json={"runs": [echo(str(i)) for i in range(7)]}
        )
        assert too_many.status_code == 422
        assert too_many.json()["errors"][0]["field"] == "body.runs"
        assert "TASK_BULK_MAX_RUNS" in too_many.json()["detail"]
        never = await client.post(
            "/api/v1/tasks/runs", json={"runs": [echo(str(i)) for i in range(6)]}
        )
        assert never.status_code == 422
        assert "RATE_LIMIT_TASK_RUNS" in never.json()["detail"]
        empty = await client.post("/api/v1/tasks/runs", json={"runs": []})
        assert empty.status_code == 422
        four = await client.post(
            "/api/v1/tasks/runs", json={"runs": [echo(str(i)) for i in range(4)]}
        )
        assert four.status_code == 202
        two = await client.post("/api/v1/tasks/runs", json={"runs": [echo("a"), echo("b")]})
        assert two.status_code == 429  # 4 + 2 runs > 5 a minute, though only 2 requests
        assert int(two.headers["retry-after"]) >= 1
        one = await client.post("/api/v1/tasks/run", json=echo("last"))
        assert one.status_code == 202
        assert (await client.post("/api/v1/tasks/run", json=echo("over"))).status_code == 429
    assert len(await tenant_runs(engine, account.tenant_id)) == 5


async def test_fair_share_admits_what_the_tenant_has_room_for_and_the_rest_waits(
    make_settings: SettingsFactory, own_broker: str, own_database: URL, own_engine: AsyncEngine
) -> None:
    """On a broker and a database of its own (no worker runs what is admitted, no other
    tenant waits), with the tenant's own cap."""
    engine = own_engine
    settings = make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=own_broker,
        task_delivery_limit=2,
        fair_share=True,
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        async with engine.begin() as connection:
            await connection.execute(
                update(Tenant).where(Tenant.id == account.tenant_id).values(max_runs_in_flight=2)
            )
        items = [echo("delayed", countdown=3600)] + [echo(str(i)) for i in range(4)]
        response = await client.post("/api/v1/tasks/runs", json={"runs": items})
    assert response.status_code == 202, response.text
    results = response.json()["runs"]
    assert [(r["state"], r["state_detail"]) for r in results] == [
        ("scheduled", None),
        ("queued", None),
        ("queued", None),
        ("queued", "waiting_for_capacity"),
        ("queued", "waiting_for_capacity"),
    ]
    stored = await tenant_runs(engine, account.tenant_id)
    admitted = {run_id for run_id, run in stored.items() if run.admitted_at is not None}
    assert admitted == {uuid.UUID(r["task_id"]) for r in results[1:3]}
    assert stored[uuid.UUID(results[3]["task_id"])].published_at is None


async def test_broker_down_refuses_every_run_and_leaves_none(
    make_settings: SettingsFactory, engine: AsyncEngine
) -> None:
    settings = make_settings(
        celery_broker_url="amqp://guest:guest@127.0.0.1:1//", broker_publish_timeout_seconds=1
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        response = await client.post(
            "/api/v1/tasks/runs", json={"runs": [echo("a"), echo("b", countdown=60)]}
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "5"
    assert await tenant_runs(engine, account.tenant_id) == {}


async def test_the_bulk_route_documents_each_answer(tasks_api: httpx.AsyncClient) -> None:
    spec = (await tasks_api.get("/openapi.json")).json()
    operation = spec["paths"]["/api/v1/tasks/runs"]["post"]
    assert {"202", "207", "422", "503"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/BulkRunsRequest")
    item = spec["components"]["schemas"]["BulkRunRequest"]["properties"]
    assert {"task", "definition", "payload", "countdown", "eta", "idempotency_key"} <= set(item)
