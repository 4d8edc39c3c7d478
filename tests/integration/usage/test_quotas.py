"""Plans and quotas in process, on the real PostgreSQL and Redis and the fake Zhipu API: the
superuser defines plans and puts tenants on them; what would pass a quota is refused before
the work (runs, uploads, runs that spend LLM tokens, the gateway's chat) with a problem
naming the quota; a change applies at the next request; a plan's rate limits replace the
settings' for its tenants; a soft limit warns once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import DocumentStatus, KnowledgeDocument, TaskRun
from switchyard.services.container import Services
from switchyard.services.usage import Meter, Use, add_in
from switchyard.settings import Settings
from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.accounts import Account, sign_up, superuser_headers
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT
from tests.integration.documents.test_documents_api import upload

SUPERUSER_PASSWORD = "quota-superuser-pw-1"
ECHO = {"task": "system.echo", "payload": {"message": "hi"}}


@pytest.fixture
def settings(
    make_settings: SettingsFactory, broker_url: str, tmp_path: Path, zhipu: FakeZhipu
) -> Settings:
    return make_settings(
        celery_broker_url=broker_url,
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        first_superuser_email=f"root-{uuid.uuid4().hex[:8]}@example.com",
        first_superuser_password=SUPERUSER_PASSWORD,
        zhipuai_api_key=API_KEY,
        zhipuai_base_url=zhipu.base_url,
        zhipuai_retry_backoff_seconds=0.01,
        embedding_provider="local",
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with running(app) as client:
        app.state.client = client
        yield app


@pytest.fixture
def client(app: FastAPI) -> httpx.AsyncClient:
    return app.state.client  # type: ignore[no-any-return]


@pytest.fixture
async def root(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> dict[str, str]:
    return await superuser_headers(client, engine, settings)


async def new_plan(client: httpx.AsyncClient, root: dict[str, str], **limits: Any) -> str:
    name = f"plan-{uuid.uuid4().hex[:8]}"
    created = await client.post("/api/v1/plans", json={"name": name, **limits}, headers=root)
    assert created.status_code == 201, created.text
    return name


async def on_plan(
    client: httpx.AsyncClient, root: dict[str, str], account: Account, **fields: Any
) -> dict[str, Any]:
    changed = await client.patch(f"/api/v1/tenants/{account.tenant_id}", json=fields, headers=root)
    assert changed.status_code == 200, changed.text
    return dict(changed.json())


async def change_plan(
    client: httpx.AsyncClient, root: dict[str, str], name: str, **fields: Any
) -> None:
    changed = await client.patch(f"/api/v1/plans/{name}", json=fields, headers=root)
    assert changed.status_code == 200, changed.text


async def runs_of(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(TaskRun).where(TaskRun.tenant_id == tenant_id)
        )
    return int(count or 0)


async def counted(app: FastAPI) -> None:
    """Accepted runs are counted within a second (services.usage): now."""
    services: Services = app.state.gateway.services
    await services.usage.flush()


def refused(answer: httpx.Response, quota: str, status: int = 429) -> dict[str, Any]:
    """The problem of a quota refusal, checked for its shape; its body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert (body["code"], body["quota"]) == ("quota_exceeded", quota)
    assert quota in body["detail"]
    return body


async def test_the_superuser_defines_plans_and_puts_tenants_on_them(
    client: httpx.AsyncClient, root: dict[str, str]
) -> None:
    owner = await sign_up(client, "On a plan")
    name = f"team-{uuid.uuid4().hex[:6]}"
    plan = {"name": name, "runs_per_day": 1000, "stored_bytes": 10**9, "soft_limit_percent": 90}

    assert (await client.post("/api/v1/plans", json=plan, headers=owner.headers)).status_code == 403
    created = await client.post("/api/v1/plans", json=plan, headers=root)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["runs_per_day"], body["documents"], body["tenants"]) == (
        name,
        1000,
        None,
        0,
    )
    assert (await client.post("/api/v1/plans", json=plan, headers=root)).status_code == 409
    for bad, field in (
        ({"name": "Not A Slug"}, "body.name"),
        ({"name": "negative", "runs_per_month": -1}, "body.runs_per_month"),
        ({"name": "over", "soft_limit_percent": 101}, "body.soft_limit_percent"),
    ):
        invalid = await client.post("/api/v1/plans", json=bad, headers=root)
        assert invalid.status_code == 422
        assert [error["field"] for error in invalid.json()["errors"]] == [field]

    unknown = await client.patch(
        f"/api/v1/tenants/{owner.tenant_id}", json={"plan": "no-such-plan"}, headers=root
    )
    assert [error["field"] for error in unknown.json()["errors"]] == ["body.plan"]
    not_a_limit = await client.patch(
        f"/api/v1/tenants/{owner.tenant_id}", json={"limit_overrides": {"bogus": 1}}, headers=root
    )
    assert not_a_limit.status_code == 422
    assert [error["field"] for error in not_a_limit.json()["errors"]] == ["body.limit_overrides"]

    summary = await on_plan(client, root, owner, plan=name, limit_overrides={"documents": 5})
    assert (summary["plan"], summary["limit_overrides"]) == (name, {"documents": 5})
    listed = (await client.get("/api/v1/plans", headers=root)).json()
    assert {item["name"]: item["tenants"] for item in listed["items"]}[name] == 1
    assert (await client.delete(f"/api/v1/plans/{name}", headers=root)).status_code == 409

    changes = await client.get(
        "/api/v1/audit-events", params={"action": "tenant.plan_changed"}, headers=owner.headers
    )
    assert [event["details"] for event in changes.json()["items"]] == [{"from": None, "to": name}]

    await on_plan(client, root, owner, plan=None)
    assert (await client.delete(f"/api/v1/plans/{name}", headers=root)).status_code == 204
    assert (await client.get(f"/api/v1/plans/{name}", headers=root)).status_code == 404


async def test_runs_past_a_quota_are_refused_naming_it_and_a_change_applies_at_once(
    app: FastAPI, client: httpx.AsyncClient, root: dict[str, str], engine: AsyncEngine
) -> None:
    owner = await sign_up(client, "Two a day")
    name = await new_plan(client, root, runs_per_day=2)
    await on_plan(client, root, owner, plan=name)
    client.headers.update(owner.headers)  # the superuser's calls name their own
    for _ in range(2):
        assert (await client.post("/api/v1/tasks/run", json=ECHO)).status_code == 202
    await counted(app)

    third = await client.post("/api/v1/tasks/run", json=ECHO)
    body = refused(third, "runs_per_day")
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert (body["limit"], body["used"], body["requested"], body["unit"]) == (2, 2, 1, "runs")
    assert datetime.fromisoformat(body["resets_at"]) == datetime(
        tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC
    )
    assert 0 < int(third.headers["retry-after"]) <= 86400
    bulk = await client.post("/api/v1/tasks/runs", json={"runs": [ECHO, ECHO]})
    assert refused(bulk, "runs_per_day")["requested"] == 2
    assert await runs_of(engine, owner.tenant_id) == 2  # nothing of either was stored

    # The superuser raises the plan's limit: the very next request is held to it.
    await change_plan(client, root, name, runs_per_day=4)
    assert (await client.post("/api/v1/tasks/run", json=ECHO)).status_code == 202
    await counted(app)
    over = await client.post("/api/v1/tasks/runs", json={"runs": [ECHO, ECHO]})
    assert refused(over, "runs_per_day")["used"] == 3
    report = (await client.get("/api/v1/usage")).json()
    assert report["plan"] == name
    assert [(q["quota"], q["limit"], q["used"], q["unit"]) for q in report["quotas"]] == [
        ("runs_per_day", 4, 3, "runs")
    ]
    # The tenant's own value of the limit (null: none) goes before its plan's.
    await on_plan(client, root, owner, limit_overrides={"runs_per_day": None})
    bulk = await client.post("/api/v1/tasks/runs", json={"runs": [ECHO, ECHO]})
    assert bulk.status_code == 202, bulk.text
    assert await runs_of(engine, owner.tenant_id) == 5


async def test_an_upload_past_the_storage_quota_is_refused_with_nothing_stored(
    app: FastAPI, client: httpx.AsyncClient, root: dict[str, str], engine: AsyncEngine
) -> None:
    owner = await sign_up(client, "Small store")
    name = await new_plan(client, root, stored_bytes=100)
    await on_plan(client, root, owner, plan=name)
    client.headers.update(owner.headers)
    services: Services = app.state.gateway.services

    big = await upload(client, "big.txt", b"x" * 150, "text/plain")
    body = refused(big, "stored_bytes", status=403)
    assert (body["limit"], body["used"], body["requested"]) == (100, 0, 150)
    assert "resets_at" not in body  # a stock frees when something is deleted
    assert await services.objects.list(owner.tenant_id) == []
    assert (await client.get("/api/v1/documents")).json()["items"] == []
    assert await runs_of(engine, owner.tenant_id) == 0

    assert (await upload(client, "a.txt", b"a" * 60, "text/plain")).status_code == 202
    second = await upload(client, "b.txt", b"b" * 60, "text/plain")
    assert refused(second, "stored_bytes", status=403)["used"] == 60
    assert len(await services.objects.list(owner.tenant_id)) == 1

    await change_plan(client, root, name, stored_bytes=None, documents=1)
    refused(await upload(client, "c.txt", b"c", "text/plain"), "documents", status=403)
    report = (await client.get("/api/v1/usage")).json()
    assert report["stocks"] == {"documents": 1, "stored.bytes": 60}


async def test_a_spent_token_budget_refuses_what_spends_tokens_and_nothing_else(
    client: httpx.AsyncClient, root: dict[str, str], engine: AsyncEngine, zhipu: FakeZhipu
) -> None:
    owner = await sign_up(client, "Out of tokens")
    name = await new_plan(client, root, llm_tokens_per_month=100)
    await on_plan(client, root, owner, plan=name)
    client.headers.update(owner.headers)
    uploaded = await upload(client, "notes.txt", b"some notes", "text/plain")
    assert uploaded.status_code == 202
    document_id = uuid.UUID(uploaded.json()["document"]["id"])
    async with engine.begin() as connection:  # as if a worker had ingested it, spending 100
        await connection.execute(
            update(KnowledgeDocument)
            .where(KnowledgeDocument.id == document_id)
            .values(status=DocumentStatus.READY)
        )
        await add_in(connection, Use(owner.tenant_id, Meter.LLM_PROMPT_TOKENS, "chat/x", 100))

    again = await client.post(f"/api/v1/documents/{document_id}/ingest")
    body = refused(again, "llm_tokens_per_month")
    assert (body["limit"], body["used"]) == (100, 100)
    refused(await upload(client, "more.txt", b"more", "text/plain"), "llm_tokens_per_month")
    chat = await client.post(
        "/api/v1/llm/chat", json={"messages": [{"role": "user", "content": "hello"}]}
    )
    refused(chat, "llm_tokens_per_month")
    assert zhipu.requests == []  # nothing reached the provider
    # A task that spends no tokens still runs.
    assert (await client.post("/api/v1/tasks/run", json=ECHO)).status_code == 202


async def test_a_plans_rate_limits_replace_the_settings_for_its_tenant(
    make_settings: SettingsFactory, broker_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    settings = make_settings(
        celery_broker_url=broker_url,
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        rate_limits_enabled=True,
        first_superuser_email=f"root-{uuid.uuid4().hex[:8]}@example.com",
        first_superuser_password=SUPERUSER_PASSWORD,
    )
    async with running(create_app(settings)) as client:
        headers = await superuser_headers(client, engine, settings)
        owner, other = await sign_up(client, "Rated"), await sign_up(client, "Unrated")
        name = await new_plan(client, headers, api_requests_per_minute=3, task_runs_per_minute=2)
        await on_plan(client, headers, owner, plan=name)

        answers = [await client.get("/api/v1/tasks/", headers=owner.headers) for _ in range(4)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        assert answers[-1].json()["code"] == "rate_limited"
        # Another tenant is held to the settings' per-caller limit only.
        assert (await client.get("/api/v1/tasks/", headers=other.headers)).status_code == 200

        await change_plan(client, headers, name, api_requests_per_minute=100)
        runs = [
            await client.post("/api/v1/tasks/run", json=ECHO, headers=owner.headers)
            for _ in range(3)
        ]
        assert [answer.status_code for answer in runs] == [202, 202, 429]
        bulk = await client.post(
            "/api/v1/tasks/runs", json={"runs": [ECHO] * 3}, headers=owner.headers
        )
        assert bulk.status_code == 422  # could never pass a limit of 2 a minute
        assert [error["field"] for error in bulk.json()["errors"]] == ["body.runs"]


async def test_a_soft_limit_warns_once_a_period(
    app: FastAPI, client: httpx.AsyncClient, root: dict[str, str]
) -> None:
    owner = await sign_up(client, "Warned")
    name = await new_plan(client, root, runs_per_day=4, soft_limit_percent=50)
    await on_plan(client, root, owner, plan=name)
    client.headers.update(owner.headers)

    async def warnings() -> list[dict[str, Any]]:
        found = await client.get(
            "/api/v1/audit-events", params={"action": "quota.soft_limit_reached"}
        )
        return [event["details"] for event in found.json()["items"]]

    assert (await client.post("/api/v1/tasks/run", json=ECHO)).status_code == 202
    await counted(app)
    assert await warnings() == []  # 1 of 4: under half
    for _ in range(2):
        assert (await client.post("/api/v1/tasks/run", json=ECHO)).status_code == 202
        await counted(app)
    assert await warnings() == [
        {"quota": "runs_per_day", "limit": 4, "used": 2, "soft_limit_percent": 50, "plan": name}
    ]


async def test_the_superuser_sees_the_months_top_spenders(
    client: httpx.AsyncClient, root: dict[str, str], engine: AsyncEngine
) -> None:
    owner = await sign_up(client, "Big spender")
    async with engine.begin() as connection:  # more than any other test's tenant spends
        await add_in(connection, Use(owner.tenant_id, Meter.LLM_PROMPT_TOKENS, "chat/x", 10**12))
    refused_to_owner = await client.get("/api/v1/usage/tenants", headers=owner.headers)
    assert refused_to_owner.status_code == 403
    answer = await client.get("/api/v1/usage/tenants", params={"limit": 1}, headers=root)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(item["tenant_id"], item["name"], item["llm_tokens"]) for item in body["items"]] == [
        (str(owner.tenant_id), "Big spender", 10**12)
    ]
    assert set(body["others"]) == {"llm_tokens", "runs", "run_seconds", "searches"}
    assert min(body["others"].values()) >= 0


async def test_a_burst_larger_than_the_pool_is_accepted_whole(
    settings: Settings, client: httpx.AsyncClient, root: dict[str, str], engine: AsyncEngine
) -> None:
    """A run's quota check reads on its request's connection, and POST /tasks/run then waits
    for the group commit, which takes a connection of its own: the request gives its
    connection back before waiting, or a burst as large as the pool holds every connection
    while the commit they wait for waits for one (503 at the pool's timeout)."""
    owner = await sign_up(client, "Bursty")
    await on_plan(client, root, owner, plan=await new_plan(client, root, runs_per_day=1000))
    narrow = settings.model_copy(
        update={
            "database_pool_size": 2,
            "database_max_overflow": 0,
            "database_pool_timeout_seconds": 2.0,
        }
    )
    async with running(create_app(narrow)) as gateway:
        answers = await asyncio.gather(
            *(
                gateway.post("/api/v1/tasks/run", json=ECHO, headers=owner.headers)
                for _ in range(20)
            )
        )
    assert [answer.status_code for answer in answers] == [202] * 20, answers[0].text
    assert await runs_of(engine, owner.tenant_id) == 20


def echo_step(name: str, *needs: str) -> dict[str, Any]:
    return {"name": name, "task": "system.echo", "needs": list(needs), "payload": {"message": name}}


async def test_a_workflow_start_past_a_runs_quota_is_refused_and_its_step_runs_count(
    app: FastAPI, client: httpx.AsyncClient, root: dict[str, str]
) -> None:
    owner = await sign_up(client, "Workflows on a plan")
    await on_plan(client, root, owner, plan=await new_plan(client, root, runs_per_day=2))
    for name, steps in (
        ("three", [echo_step("a"), echo_step("b", "a"), echo_step("c", "b")]),
        ("one", [echo_step("a")]),
    ):
        created = await client.post(
            "/api/v1/workflows", json={"name": name, "steps": steps}, headers=owner.headers
        )
        assert created.status_code == 201, created.text

    async def start(name: str) -> httpx.Response:
        return await client.post(
            f"/api/v1/workflows/{name}/runs", json={"input": None}, headers=owner.headers
        )

    # Three steps are three runs: past a quota of two before anything is stored.
    body = refused(await start("three"), "runs_per_day")
    assert (body["limit"], body["used"]) == (2, 0)
    listed = await client.get("/api/v1/tasks/", headers=owner.headers)
    assert listed.json()["items"] == []
    # A one-step workflow fits, twice; its step runs count as the tenant's runs.
    for _ in range(2):
        assert (await start("one")).status_code == 202
        await counted(app)
    assert refused(await start("one"), "runs_per_day")["used"] == 2
