"""Who may start which task over REST. Every registered task is read from the registry, so a
task added later is held to the same rule without a test of its own:

- an internal task is unknown over REST: POST /tasks/run is 404, it is not listed, and a
  definition naming it is refused like an unknown task;
- a public task needs its scope: without it 403 naming it, with it accepted;
- system.sleep and system.fail are absent in production unless SYSTEM_TASKS_ENABLED, and
  system.fail's crash is refused there even then."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.auth.scopes import SCOPES
from switchyard.domains import load_task_modules
from switchyard.platform.registry import SYSTEM_TASKS, TaskSpec
from switchyard.settings import Settings
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT

REGISTRY = load_task_modules()
INTERNAL = [spec for spec in REGISTRY.all() if spec.access == "internal"]
PUBLIC = [spec for spec in REGISTRY.all() if spec.access == "public"]
# A valid payload for each public task that needs one; any other gets {} (a 422 for a
# payload still shows the caller passed the permission check).
PAYLOADS: dict[str, dict[str, Any]] = {
    "system.echo": {"message": "hello"},
    "system.sleep": {"seconds": 0},
    "system.fail": {"retryable": False},
}


@pytest.fixture
def settings(make_settings: SettingsFactory, own_broker: str) -> Settings:
    return make_settings(celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


async def member(client: httpx.AsyncClient, engine: AsyncEngine) -> Account:
    """A tenant's member (not an admin): no tasks:admin, no datasources:write."""
    account = await sign_up(client)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE memberships SET role = 'member' WHERE user_id = :user"),
            {"user": account.user_id},
        )
    return account


async def key_with(client: httpx.AsyncClient, owner: Account, scopes: set[str]) -> dict[str, str]:
    created = await client.post(
        "/api/v1/api-keys",
        json={"name": uuid.uuid4().hex[:8], "scopes": sorted(scopes)},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


def test_the_internal_tasks_are_the_platforms_own() -> None:
    assert {spec.name for spec in INTERNAL} >= {
        "documents.ingest",
        "documents.extract_entities",
        "datasources.test_connection",
    }
    assert all(spec.scope in SCOPES for spec in REGISTRY.all())


@pytest.mark.parametrize("spec", INTERNAL, ids=lambda spec: spec.name)
async def test_an_internal_task_is_unknown_over_rest(
    spec: TaskSpec[Any], client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await sign_up(client)  # every scope there is, and still no
    for account in (owner, await member(client, engine)):
        ran = await client.post(
            "/api/v1/tasks/run",
            json={"task": spec.name, "payload": {"data_source_id": str(uuid.uuid4())}},
            headers=account.headers,
        )
        assert ran.status_code == 404, ran.text
        assert ran.json()["detail"] == f"No task named {spec.name!r} is registered."
        in_bulk = await client.post(
            "/api/v1/tasks/runs",
            json={
                "runs": [{"task": "system.echo", "payload": {"message": "x"}}, {"task": spec.name}]
            },
            headers=account.headers,
        )
        assert in_bulk.status_code == 422, in_bulk.text
        assert [error["field"] for error in in_bulk.json()["errors"]] == ["body.runs.1.task"]
        listed = await client.get("/api/v1/tasks/registered", headers=account.headers)
        assert spec.name not in {task["name"] for task in listed.json()["tasks"]}
    defined = await client.post(
        "/api/v1/tasks/register",
        json={"name": "sneaky", "task": spec.name, "payload": {}},
        headers=owner.headers,
    )
    assert defined.status_code == 422, defined.text
    assert [error["field"] for error in defined.json()["errors"]] == ["body.task"]


@pytest.mark.parametrize("spec", PUBLIC, ids=lambda spec: spec.name)
async def test_a_public_task_needs_its_scope(
    spec: TaskSpec[Any], client: httpx.AsyncClient
) -> None:
    owner = await sign_up(client)
    without = await key_with(client, owner, (set(SCOPES) - {spec.scope}) | {"tasks:read"})
    body = {"task": spec.name, "payload": PAYLOADS.get(spec.name, {})}
    refused = await client.post("/api/v1/tasks/run", json=body, headers=without)
    assert refused.status_code == 403, refused.text
    assert repr(spec.scope) in refused.json()["detail"]
    if spec.scope != "tasks:run":  # bulk needs tasks:run itself
        in_bulk = await client.post("/api/v1/tasks/runs", json={"runs": [body]}, headers=without)
        assert in_bulk.status_code == 403, in_bulk.text
        assert repr(spec.scope) in in_bulk.json()["detail"]
    listed = await client.get("/api/v1/tasks/registered", headers=without)
    assert spec.name not in {task["name"] for task in listed.json()["tasks"]}
    if spec.scope != "tasks:admin":  # a definition needs tasks:admin and the task's scope
        defined = await client.post(
            "/api/v1/tasks/register",
            json={"name": uuid.uuid4().hex[:8], "task": spec.name, "payload": body["payload"]},
            headers=without,
        )
        assert defined.status_code == 403, defined.text
        assert repr(spec.scope) in defined.json()["detail"]

    allowed = await key_with(client, owner, {spec.scope, "tasks:read"})
    accepted = await client.post("/api/v1/tasks/run", json=body, headers=allowed)
    assert accepted.status_code in (202, 422), accepted.text
    if spec.name in PAYLOADS:
        assert accepted.status_code == 202
    listed = await client.get("/api/v1/tasks/registered", headers=allowed)
    shown = {task["name"]: task for task in listed.json()["tasks"]}
    assert shown[spec.name]["scope"] == spec.scope


async def test_a_member_cannot_test_a_data_source_by_the_task_route(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The run route used to let a member without datasources:write probe a data source
    (host, port, reachability) and re-run documents.ingest."""
    owner = await sign_up(client)
    source = await client.post(
        "/api/v1/data-sources",
        json={"name": "warehouse", "url": "postgresql://bi:pw@db.example.com/bi"},
        headers=owner.headers,
    )
    assert source.status_code == 201, source.text
    someone = await member(client, engine)
    for task, payload in (
        ("datasources.test_connection", {"data_source_id": source.json()["id"]}),
        ("documents.ingest", {"document_id": str(uuid.uuid4())}),
    ):
        ran = await client.post(
            "/api/v1/tasks/run", json={"task": task, "payload": payload}, headers=someone.headers
        )
        assert ran.status_code == 404, ran.text
    tested = await client.post(
        f"/api/v1/data-sources/{source.json()['id']}/test", headers=someone.headers
    )
    assert tested.status_code == 403
    assert "datasources:write" in tested.json()["detail"]


def test_system_tasks_are_absent_in_production_unless_enabled(
    make_settings: SettingsFactory,
) -> None:
    production = make_settings(environment="production")
    assert production.system_tasks_on is False
    registry = load_task_modules(system_tasks=production.system_tasks_on)
    assert {spec.name for spec in registry.all()} & SYSTEM_TASKS == set()
    assert registry.get("system.echo") is not None
    assert make_settings(environment="production", system_tasks_enabled=True).system_tasks_on
    assert make_settings(environment="development").system_tasks_on
    assert not make_settings(environment="test", system_tasks_enabled=False).system_tasks_on
    assert {spec.name for spec in load_task_modules().all()} >= SYSTEM_TASKS


def test_crash_is_refused_in_production_and_without_an_environment() -> None:
    spec = REGISTRY.get("system.fail")
    assert spec is not None
    for environment in ("production", None):
        context = {} if environment is None else {"environment": environment}
        with pytest.raises(ValidationError, match="crash is refused in production"):
            spec.input_model.model_validate({"crash": True}, context=context)
    assert spec.validate({"crash": True}, "test").crash is True
    assert spec.validate({"crash": False}, "production").crash is False


async def test_crash_over_rest_in_production_is_422(
    make_settings: SettingsFactory, own_broker: str
) -> None:
    settings = make_settings(
        environment="production",
        system_tasks_enabled=True,
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
    )
    async with running(create_app(settings)) as client:
        owner = await sign_up(client)
        crash = await client.post(
            "/api/v1/tasks/run",
            json={"task": "system.fail", "payload": {"crash": True}},
            headers=owner.headers,
        )
        assert crash.status_code == 422, crash.text
        assert [error["field"] for error in crash.json()["errors"]] == ["body.payload.crash"]
        defined = await client.post(
            "/api/v1/tasks/register",
            json={"name": "boom", "task": "system.fail", "payload": {"crash": True}},
            headers=owner.headers,
        )
        assert defined.status_code == 422
        plain = await client.post(
            "/api/v1/tasks/run",
            json={"task": "system.fail", "payload": {"retryable": False}},
            headers=owner.headers,
        )
        assert plain.status_code == 202, plain.text
