"""A database restart drops the pooled connections; the next request and the next run still go
through: what is safe to repeat is repeated once on a new connection (the pool pings only
connections idle for a while, so a connection used a moment ago is not checked first)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.db.models import RunState, TaskRun, Tenant
from switchyard.domains import load_task_modules
from switchyard.platform.execution import execute
from switchyard.services.container import Services
from switchyard.settings import Settings
from tests.fixtures.accounts import Account
from tests.fixtures.tasks import published_at, unique


async def drop_connections(engine: AsyncEngine, application_name: str) -> int:
    """What a server restart does to one client's pooled connections: those of
    `application_name` on this test process's database only (another test process's gateway,
    or a benchmark's, on the same server, has the same name and must keep its connections)."""
    async with engine.connect() as admin:
        dropped = await admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ),
            {"name": application_name},
        )
        return len(dropped.all())


async def test_a_submission_right_after_the_connections_dropped_is_accepted(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    body = {"task": "system.echo", "payload": {"message": "before"}}
    assert (await tasks_api.post("/api/v1/tasks/run", json=body)).status_code == 202
    assert await drop_connections(engine, "switchyard-api-gateway") >= 1

    accepted = await tasks_api.post(
        "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "after"}}
    )
    assert accepted.status_code == 202, accepted.text
    async with async_sessionmaker(engine)() as session:
        stored = await session.get(TaskRun, uuid.UUID(accepted.json()["task_id"]))
    assert stored is not None
    assert stored.tenant_id == tasks_account.tenant_id
    assert await published_at(engine, stored.id) is not None


async def test_a_run_claimed_right_after_the_connections_dropped_runs_once(
    task_settings: Settings, engine: AsyncEngine
) -> None:
    spec = load_task_modules().get("system.echo")
    assert spec is not None
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        tenant = Tenant(name="Dropped", slug=unique("dropped"))
        session.add(tenant)
        await session.flush()
        runs = [
            TaskRun(
                id=uuid.uuid4(),
                tenant_id=tenant.id,
                task=spec.name,
                queue=spec.queue,
                payload={"message": str(index)},
                state=RunState.QUEUED,
                attempts=0,
                # Admitted and published, as the gateway leaves a run: the session's workers
                # sweep for waiting runs and beat republishes unpublished ones, and either
                # would hand this one to another worker while this test runs it.
                admitted_at=datetime.now(UTC),
                published_at=datetime.now(UTC),
            )
            for index in range(2)
        ]
        session.add_all(runs)
    services = Services.create(task_settings, "dropped-test")
    try:
        first = await execute(services, spec, runs[0].id, redelivered=False, tenant_id=tenant.id)
        assert first.kind == "done"
        assert await drop_connections(engine, "switchyard-dropped-test") == 1
        second = await execute(services, spec, runs[1].id, redelivered=False, tenant_id=tenant.id)
        assert second.kind == "done"
    finally:
        await services.close()
    async with async_sessionmaker(engine)() as session:
        stored = (
            await session.scalars(select(TaskRun).where(TaskRun.tenant_id == tenant.id))
        ).all()
    assert {run.state for run in stored} == {RunState.SUCCEEDED}
    assert sorted((run.result or {})["message"] for run in stored) == ["0", "1"]
    assert all(run.attempts == 1 for run in stored)
