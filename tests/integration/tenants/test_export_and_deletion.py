"""A tenant's data, exported and erased, on the real servers: PostgreSQL, Redis, RabbitMQ (a vhost
of the test's own), the S3 stand-in (moto), a Chroma server, MariaDB as the `analytics` bind and
the Zhipu fake (embeddings). Two tenants touch every store; the first is exported (the archive
holds each of its tables' rows, its objects, no secret and nothing of the other's), then
deleted (a scan of every table, bind, bucket prefix, collection and Redis key finds nothing of
it, and the other tenant's data is as it was)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.db.binds import migrate_bind
from switchyard.db.binds.models import UsageCounterCopy
from switchyard.db.models import LlmReservation, RunState, TaskRun, TenantDeletion
from switchyard.platform import runtime
from switchyard.platform.celery_app import AMQP_TRANSPORT
from switchyard.platform.delivery import deliver
from switchyard.platform.runs import admission
from switchyard.services import usage
from switchyard.services.container import Services
from switchyard.settings import Settings
from switchyard.tenants.deletion import Eraser, owned_tables
from switchyard.tenants.export import SKIPPED, TABLES
from tests.fakes.broker import InMemoryBroker
from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.accounts import Account, sign_up, superuser_headers
from tests.fixtures.backing import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.mail import Mailbox
from tests.fixtures.tasks import insert_dead_letter, insert_run
from tests.integration.db.test_binds import mariadb_url  # noqa: F401 - the fixture
from tests.integration.tasks.test_worker_core import delivery, spec

SOURCE_PASSWORD = "s3cret-of-the-crm"
TEXT = b"ACME hired Ada Lovelace in London.\n\nThe London office of ACME opened in May."


@pytest.fixture
def settings(
    make_settings: SettingsFactory,
    own_broker: str,
    s3_endpoint: str,
    chroma_server: tuple[str, int],
    zhipu: FakeZhipu,
    mariadb_url: str,  # noqa: F811 - the fixture
    mailbox: Mailbox,
    tmp_path: Path,
) -> Settings:
    return make_settings(
        **mailbox.settings,
        celery_broker_url=own_broker,
        var_dir=tmp_path,
        minio_endpoint=s3_endpoint,
        minio_access_key=S3_ACCESS_KEY,
        minio_secret_key=S3_SECRET_KEY,
        minio_bucket=f"export-{uuid.uuid4().hex[:12]}",
        chroma_host=chroma_server[0],
        chroma_port=chroma_server[1],
        zhipuai_api_key=API_KEY,
        zhipuai_base_url=zhipu.base_url,
        zhipuai_retry_backoff_seconds=0.01,
        embedding_provider="zhipu",
        database_binds={"analytics": mariadb_url},
        tenant_deletion_rest_ratio=0,
        first_superuser_email=f"root-{uuid.uuid4().hex[:8]}@example.com",
        first_superuser_password="a-long-superuser-password",
    )


@pytest.fixture
async def app(settings: Settings, mariadb_url: str) -> FastAPI:  # noqa: F811 - the fixture
    await migrate_bind("analytics", mariadb_url)
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


@pytest.fixture
def loop(settings: Settings) -> Iterator[runtime.WorkerLoop]:
    """The worker's core in this process, on the same servers: runs are done by `work`."""
    broker = InMemoryBroker()
    current = runtime.WorkerLoop(
        settings, "worker", admission.dispatcher_for(broker, settings)
    ).start()
    yield current
    current.close()


async def settled_usage(services: Services, loop: runtime.WorkerLoop) -> None:
    """Every use counted so far written: the gateway's (runs accepted) and the worker's."""
    await services.usage.flush()
    await asyncio.to_thread(loop.call, loop.services.usage.flush(), 30)


def services_of(app: FastAPI) -> Services:
    found: Services = app.state.gateway.services
    return found


async def work(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, run_id: Any
) -> TaskRun:
    """Do the run as a worker would, and return it as the ledger has it then."""
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        run = await session.get(TaskRun, uuid.UUID(str(run_id)))
    assert run is not None
    task = spec(settings, run.task)
    await asyncio.to_thread(loop.call, deliver(loop, task, delivery(run), AMQP_TRANSPORT), 60)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        done = await session.get(TaskRun, run.id)
    assert done is not None
    return done


async def ok(answer: Any, status: int = 200) -> Any:
    response = await answer
    assert response.status_code == status, response.text
    return response.json() if response.content else None


@dataclass
class Touched:
    """A tenant that has used every store: what it made."""

    account: Account
    document_id: str
    run_id: str
    member_id: uuid.UUID
    api_key: str


async def touch_every_store(
    client: httpx.AsyncClient,
    loop: runtime.WorkerLoop,
    settings: Settings,
    engine: AsyncEngine,
    name: str,
) -> Touched:
    """A fresh tenant whose owner uses every part of the product: a member, an invitation, an
    API key and an OAuth client, a data source with a password in its URL, a definition, a
    run done by the worker (its view cached), a dead letter, an uploaded document ingested
    into Chroma (objects, vectors, usage), rate-limit keys in Redis, a reservation of LLM
    tokens, and usage copied to the analytics bind."""
    owner = await sign_up(client, name)
    h = owner.headers
    member = await sign_up(client, f"{name} member's own")
    invited = await ok(
        client.post(
            "/api/v1/invitations", json={"email": member.email, "role": "member"}, headers=h
        ),
        201,
    )
    assert invited["email"] == member.email
    key = await ok(
        client.post("/api/v1/api-keys", json={"name": "ci", "scopes": ["tasks:read"]}, headers=h),
        201,
    )
    await ok(client.get("/api/v1/tasks/", headers={"Authorization": f"Bearer {key['key']}"}))
    await ok(
        client.post(
            "/api/v1/oauth-clients", json={"name": "etl", "scopes": ["tasks:read"]}, headers=h
        ),
        201,
    )
    url = f"postgresql://crm:{SOURCE_PASSWORD}@crm.example.com/crm"
    await ok(client.post("/api/v1/data-sources", json={"name": "crm", "url": url}, headers=h), 201)
    definition = {"name": "nightly", "task": "system.echo", "payload": {"message": name}}
    await ok(client.post("/api/v1/tasks/register", json=definition, headers=h), 201)
    workflow = {
        "name": "nightly",
        "steps": [{"name": "say", "task": "system.echo", "payload": {"message": {"$input": ""}}}],
    }
    await ok(client.post("/api/v1/workflows", json=workflow, headers=h), 201)
    await ok(client.post("/api/v1/workflows/nightly/runs", json={"input": name}, headers=h), 202)
    accepted = await ok(
        client.post(
            "/api/v1/tasks/run",
            json={"task": "system.echo", "payload": {"message": name}},
            headers=h,
        ),
        202,
    )
    assert (await work(loop, settings, engine, accepted["task_id"])).state is RunState.SUCCEEDED
    await ok(client.get(f"/api/v1/tasks/{accepted['task_id']}", headers=h))  # cached view
    await insert_dead_letter(engine, owner.tenant_id)
    uploaded = await ok(
        client.post(
            "/api/v1/documents", files={"file": ("notes.txt", TEXT, "text/plain")}, headers=h
        ),
        202,
    )
    ingested = await work(loop, settings, engine, uploaded["task_id"])
    assert ingested.state is RunState.SUCCEEDED, ingested.error_message
    async with async_sessionmaker(engine).begin() as session:
        session.add(
            LlmReservation(
                id=uuid.uuid4(),
                tenant_id=owner.tenant_id,
                tokens=10,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
    return Touched(
        owner, uploaded["document"]["id"], accepted["task_id"], member.user_id, key["key"]
    )


async def rows_naming(
    engine: AsyncEngine, needle: str, *, skip: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Per table of the main database: rows whose text mentions `needle` (any column)."""
    found: dict[str, int] = {}
    async with engine.connect() as connection:
        tables = await connection.scalars(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        )
        for table in list(tables):
            if table in skip:
                continue
            count = await connection.scalar(
                text(f'SELECT count(*) FROM "{table}" AS t WHERE t::text LIKE :needle'),
                {"needle": f"%{needle}%"},
            )
            if count:
                found[table] = int(count)
    return found


async def settled(engine: AsyncEngine, needle: str, within: float = 10.0) -> dict[str, int]:
    """`rows_naming` once two reads a recorder's flush apart agree (a use counted a moment ago
    is written within FLUSH_SECONDS)."""
    deadline = time.monotonic() + within
    last = await rows_naming(engine, needle)
    while time.monotonic() < deadline:
        await asyncio.sleep(usage.FLUSH_SECONDS + 0.2)  # a recorder's write between them
        now = await rows_naming(engine, needle)
        if now == last:
            return now
        last = now
    raise AssertionError(f"rows naming {needle} still changing after {within} s")


async def redis_keys(services: Services, tenant_id: uuid.UUID) -> set[bytes]:
    assert services.redis is not None
    found: set[bytes] = set()
    for pattern in (f"*{tenant_id}*", f"*{tenant_id.hex}*"):
        found |= {key async for key in services.redis.scan_iter(match=pattern, count=1000)}
    return found


async def outside(services: Services, tenant_id: uuid.UUID) -> dict[str, Any]:
    """What the tenant has outside the main database: object keys, Chroma collections, Redis
    keys, and rows on the analytics bind."""
    objects = services.objects
    minio = objects.client  # type: ignore[attr-defined]
    bucket = objects.bucket  # type: ignore[attr-defined]
    keys = await asyncio.to_thread(
        lambda: [item.object_name for item in minio.list_objects(bucket, recursive=True)]
    )
    client = await services.vectors.client()
    collections = [getattr(c, "name", c) for c in await client.list_collections()]
    bind = services.binds["analytics"]
    async with bind.engine.connect() as connection:
        copies = await connection.scalar(
            select(func.count())
            .select_from(UsageCounterCopy)
            .where(UsageCounterCopy.tenant_id == tenant_id)
        )
    return {
        "objects": sorted(k for k in keys if str(tenant_id) in k),
        "collections": sorted(c for c in collections if tenant_id.hex in c),
        "redis": await redis_keys(services, tenant_id),
        "analytics_rows": int(copies or 0),
    }


def test_every_tenant_owned_table_is_exported_or_skipped_for_a_reason() -> None:
    owned = {table.name for table in owned_tables()}
    exported = {exported.table for exported in TABLES}
    assert owned <= exported | set(SKIPPED)
    assert not exported & set(SKIPPED)


async def test_an_export_holds_every_table_of_the_tenant_and_nothing_else(
    app: FastAPI,
    client: httpx.AsyncClient,
    loop: runtime.WorkerLoop,
    settings: Settings,
    engine: AsyncEngine,
) -> None:
    mine = await touch_every_store(client, loop, settings, engine, "Exporter")
    other = await touch_every_store(client, loop, settings, engine, "Bystander")
    h = mine.account.headers

    # A member who is not an admin may not export; the owner may, once at a time.
    requested = await client.post("/api/v1/tenants/current/exports", headers=h)
    assert requested.status_code == 202, requested.text
    export = requested.json()
    assert export["state"] == "queued"
    assert export["download_url"] is None
    assert requested.headers["location"] == f"/api/v1/tenants/current/exports/{export['id']}"
    again = await client.post("/api/v1/tenants/current/exports", headers=h)
    assert again.status_code == 409, again.text
    assert export["id"] in again.json()["detail"]
    # Another tenant cannot read it.
    hidden = await client.get(
        f"/api/v1/tenants/current/exports/{export['id']}", headers=other.account.headers
    )
    assert hidden.status_code == 404

    done = await work(loop, settings, engine, export["id"])
    assert done.state is RunState.SUCCEEDED, done.error_message
    view = await ok(client.get(f"/api/v1/tenants/current/exports/{export['id']}", headers=h))
    assert view["state"] == "succeeded"
    assert view["requested_by"] == f"user:{mine.account.user_id}"
    # The echo, the ingestion, the dead letter's, the invitation's email, the workflow's
    # first step and the export.
    assert view["tables"]["task_runs"] == 6
    assert (view["tables"]["workflow_runs"], view["tables"]["workflow_steps"]) == (1, 1)
    assert view["objects"] == 1
    link = view["download_url"]
    assert link.startswith("http://testserver/api/v1/exports/download?token=")
    assert datetime.fromisoformat(view["download_expires_at"]) > datetime.now(UTC) + timedelta(
        minutes=59
    )

    # The link is the credential: no bearer token; a forged or altered one is 404.
    download = await client.get(
        link.removeprefix("http://testserver"), headers={"Authorization": ""}
    )
    assert download.status_code == 200, download.text
    assert download.headers["content-type"] == "application/gzip"
    assert int(download.headers["content-length"]) == view["size_bytes"] == len(download.content)
    forged = await client.get(link.removeprefix("http://testserver")[:-4] + "AAAA")
    assert forged.status_code == 404
    assert forged.headers["content-type"] == "application/problem+json"
    # Nor is an access token a download link, or the link an access token.
    token = link.split("token=", 1)[1]
    as_link = await client.get(
        "/api/v1/exports/download", params={"token": mine.account.access_token}
    )
    assert as_link.status_code == 404
    as_bearer = await client.get(
        "/api/v1/tenants/current", headers={"Authorization": f"Bearer {token}"}
    )
    assert as_bearer.status_code == 401

    archive = download.content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = set(tar.getnames())
        files = {name: tar.extractfile(name).read() for name in names}  # type: ignore[union-attr]
    assert {f"tables/{exported.table}.jsonl" for exported in TABLES} | {"manifest.json"} <= names
    manifest = json.loads(files["manifest.json"])
    assert manifest["tenant_id"] == str(mine.account.tenant_id)
    assert manifest["tables"] == view["tables"]
    tables = {
        exported.table: [
            json.loads(line) for line in files[f"tables/{exported.table}.jsonl"].splitlines()
        ]
        for exported in TABLES
    }
    for table, rows in tables.items():
        assert len(rows) == manifest["tables"][table], table
        for row in rows:
            if table == "tenants":
                assert row["id"] == str(mine.account.tenant_id)
            elif table != "users":
                assert row["tenant_id"] == str(mine.account.tenant_id), table
    assert [row["id"] for row in tables["tenants"]] == [str(mine.account.tenant_id)]
    assert {row["email"] for row in tables["users"]} == {mine.account.email}  # invited, not joined
    assert {row["task"] for row in tables["task_runs"]} >= {"system.echo", "documents.ingest"}
    assert len(tables["dead_letters"]) == 1
    assert len(tables["knowledge_documents"]) == 1
    assert len(tables["data_source_connections"]) == 1
    assert len(tables["api_keys"]) == 1
    assert any(row["action"] == "tenant.export_requested" for row in tables["audit_events"])
    meters = {row["meter"] for row in tables["usage_counters"]}
    assert meters >= {"run.accepted", "documents", "stored.bytes", "embedding.tokens"}
    # The stored objects, as uploaded.
    document = tables["knowledge_documents"][0]
    assert files[f"objects/{document['object_key']}"] == TEXT
    # No secret, no hash of one, nothing of the other tenant.
    whole = b"".join(data for name, data in files.items() if name != "manifest.json")
    assert manifest["omitted"]["users"] == ["password_hash"]
    assert manifest["omitted"]["refresh_tokens"] == ["*"]
    assert b"password_hash" not in whole
    assert b"secret_hash" not in whole
    assert b"nonce" not in whole
    assert b"encrypted_connection_url" not in whole
    assert SOURCE_PASSWORD.encode() not in whole
    assert mine.api_key.encode() not in whole
    assert str(other.account.tenant_id).encode() not in whole
    assert other.account.email.encode() not in whole
    assert other.run_id.encode() not in whole

    # The request and the download are in the tenant's audit log.
    log = await ok(client.get("/api/v1/audit-events", headers=h))
    actions = [(event["action"], event["target_id"]) for event in log["items"]]
    assert ("tenant.export_requested", export["id"]) in actions
    assert ("tenant.export_downloaded", export["id"]) in actions

    # A second export replaces the first archive: its link stops working.
    second = await ok(client.post("/api/v1/tenants/current/exports", headers=h), 202)
    assert (await work(loop, settings, engine, second["id"])).state is RunState.SUCCEEDED
    gone = await client.get(link.removeprefix("http://testserver"))
    assert gone.status_code == 404
    assert "replaced" in gone.json()["detail"]
    keys = [
        info.key for info in await services_of(app).objects.list(mine.account.tenant_id, "exports/")
    ]
    assert keys == [f"exports/{second['id']}.tar.gz"]


async def test_only_an_admin_exports_and_only_the_owner_deletes(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await sign_up(client, "Roles")
    key = await ok(
        client.post(
            "/api/v1/api-keys", json={"name": "ci", "scopes": ["tasks:read"]}, headers=owner.headers
        ),
        201,
    )
    machine = {"Authorization": f"Bearer {key['key']}"}
    assert (
        await client.post("/api/v1/tenants/current/exports", headers=machine)
    ).status_code == 403
    assert (
        await client.post("/api/v1/tenants/current/deletion", headers=machine)
    ).status_code == 403
    unknown = await client.get(
        f"/api/v1/tenants/current/exports/{uuid.uuid4()}", headers=owner.headers
    )
    assert unknown.status_code == 404
    bad = await client.get("/api/v1/exports/download")
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.token"


async def test_a_deletion_is_scheduled_cancelled_and_refused_twice(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    owner = await sign_up(client, "Leaving")
    h = owner.headers
    assert (await client.get("/api/v1/tenants/current/deletion", headers=h)).status_code == 404
    scheduled = await ok(client.post("/api/v1/tenants/current/deletion", headers=h), 202)
    assert scheduled["tenant_id"] == str(owner.tenant_id)
    assert scheduled["requested_by"] == f"user:{owner.user_id}"
    due = datetime.fromisoformat(scheduled["delete_after"])
    assert abs(due - datetime.now(UTC) - timedelta(days=7)) < timedelta(minutes=1)
    twice = await client.post("/api/v1/tenants/current/deletion", headers=h)
    assert twice.status_code == 409
    assert (await ok(client.get("/api/v1/tenants/current/deletion", headers=h)))["id"] == scheduled[
        "id"
    ]

    # Not due: beat's pass leaves it (and the tenant works as before).
    await Eraser(services_of(app)).erase_due()
    assert (await client.get("/api/v1/tenants/current", headers=h)).status_code == 200

    cancelled = await ok(client.delete("/api/v1/tenants/current/deletion", headers=h))
    assert cancelled["cancelled_by"] == f"user:{owner.user_id}"
    assert cancelled["cancelled_at"]
    assert (await client.delete("/api/v1/tenants/current/deletion", headers=h)).status_code == 404
    log = await ok(client.get("/api/v1/audit-events", headers=h))
    actions = [event["action"] for event in log["items"]]
    assert actions[:2] == ["tenant.deletion_cancelled", "tenant.deletion_scheduled"]

    superuser = await superuser_headers(client, engine, settings)
    bad = await client.post(
        f"/api/v1/tenants/{owner.tenant_id}/deletion", json={"grace_days": -1}, headers=superuser
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "body.grace_days"
    missing = await client.post(
        f"/api/v1/tenants/{uuid.uuid4()}/deletion", json={}, headers=superuser
    )
    assert missing.status_code == 404
    again = await ok(
        client.post(
            f"/api/v1/tenants/{owner.tenant_id}/deletion", json={"grace_days": 3}, headers=superuser
        ),
        202,
    )
    assert again["id"] != scheduled["id"]
    listed = await ok(client.get("/api/v1/tenants/deletions", headers=superuser))
    ids = [item["id"] for item in listed["items"]]
    assert ids.index(again["id"]) < ids.index(scheduled["id"])  # newest first
    assert (await client.get("/api/v1/tenants/deletions", headers=h)).status_code == 403


async def test_a_deleted_tenant_leaves_nothing_behind_and_the_other_is_untouched(
    app: FastAPI,
    client: httpx.AsyncClient,
    loop: runtime.WorkerLoop,
    settings: Settings,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    services = services_of(app)
    gone = await touch_every_store(client, loop, settings, engine, "Churned")
    kept = await touch_every_store(client, loop, settings, engine, "Staying")
    tenant, other = gone.account.tenant_id, kept.account.tenant_id
    # A run in flight, to be cancelled first.
    waiting = await insert_run(engine, tenant, payload={"message": "never"})
    await settled_usage(services, loop)
    usage_copied = await usage.ship(engine, services.binds["analytics"])
    assert usage_copied > 0

    before = await rows_naming(engine, str(tenant))
    assert set(before) >= {table.name for table in owned_tables()} - {"refresh_tokens"} | {
        "tenants",
    }
    assert all((await outside(services, tenant)).values())  # the tenant is in every store
    other_rows, other_outside = await settled(engine, str(other)), await outside(services, other)

    superuser = await superuser_headers(client, engine, settings)
    scheduled = await ok(
        client.post(
            f"/api/v1/tenants/{tenant}/deletion", json={"grace_days": 0}, headers=superuser
        ),
        202,
    )
    with caplog.at_level(logging.INFO, logger="switchyard.tenants.deletion"):
        removed = await Eraser(services).erase(uuid.UUID(scheduled["id"]))
    # The waiting run, the invitation's email and the workflow's first step.
    assert removed["runs_cancelled"] == 3
    assert removed["objects"] == 1
    assert removed["vector_collections"] == 1
    assert removed["analytics_rows"] > 0
    assert removed["users"] == 1  # the owner; the member belongs to a tenant of their own
    assert any(record.message == "tenant deleted" for record in caplog.records)

    # Nothing of it anywhere: the tombstone alone names it.
    assert await rows_naming(engine, str(tenant)) == {"tenant_deletions": 1}
    assert await rows_naming(engine, gone.account.email) == {}
    assert await rows_naming(engine, str(gone.account.user_id)) == {}
    assert await rows_naming(engine, str(waiting.id)) == {}
    left = await outside(services, tenant)
    assert left == {"objects": [], "collections": [], "redis": set(), "analytics_rows": 0}
    # The other tenant is as it was (and so is the member, who has a tenant of their own).
    assert await rows_naming(engine, str(other)) == other_rows
    assert await outside(services, other) == other_outside
    assert await rows_naming(engine, str(gone.member_id))

    # The tombstone: who, when, what went; its tokens and keys no longer work.
    async with async_sessionmaker(engine)() as session:
        tombstone = await session.get(TenantDeletion, uuid.UUID(scheduled["id"]))
    assert tombstone is not None
    assert tombstone.finished_at is not None
    assert tombstone.requested_by.startswith("user:")
    assert tombstone.removed["task_runs"] == before["task_runs"] == 6
    assert tombstone.removed["users"] == 1
    listed = await ok(client.get("/api/v1/tenants/deletions", headers=superuser))
    assert listed["items"][0]["id"] == scheduled["id"]
    assert listed["items"][0]["finished_at"]
    assert (
        await client.get("/api/v1/tenants/current", headers=gone.account.headers)
    ).status_code == 401
    as_key = await client.get("/api/v1/tasks/", headers={"Authorization": f"Bearer {gone.api_key}"})
    assert as_key.status_code == 401
    # Erasing again changes nothing (a pass taken up again after a failure).
    assert await Eraser(services).erase(uuid.UUID(scheduled["id"])) == {}
    assert (
        await client.get("/api/v1/tenants/current", headers=kept.account.headers)
    ).status_code == 200
