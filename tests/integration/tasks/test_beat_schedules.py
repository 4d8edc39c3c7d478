"""Beat and stored schedules: no schedule is SQL NULL, a broken definition is skipped without
stopping anyone else's, and a beat whose ticks keep failing is unhealthy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from switchyard.db.migrate import migrate
from switchyard.db.models import UNPLANNED
from switchyard.domains import load_task_modules
from switchyard.platform.beat import Beat, scheduled_definitions
from switchyard.platform.broker import Broker
from switchyard.roles.healthcheck import check
from switchyard.services.container import Services
from switchyard.settings import Role, Settings
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.faults import relayed
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.tasks import unique


@pytest.fixture
async def beat(task_settings: Settings, tmp_path: Path) -> AsyncIterator[Beat]:
    services = Services.create(task_settings, "beat")
    broker = Broker.create(task_settings)
    assert broker is not None
    try:
        yield Beat(services, broker.publisher, load_task_modules(), tmp_path / "beat.heartbeat")
    finally:
        await services.close()
        broker.close()


async def test_a_definition_without_schedule_is_stored_as_sql_null(
    tasks_api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    name = unique("unscheduled")
    created = await tasks_api.post(
        "/api/v1/tasks/register",
        json={"name": name, "task": "system.echo", "payload": {"message": "m"}},
    )
    assert created.status_code == 201, created.text
    assert created.json()["schedule"] is None
    patched = await tasks_api.patch(
        f"/api/v1/tasks/definitions/{name}", json={"schedule": {"every_seconds": 60}}
    )
    assert patched.json()["schedule"] == {"every_seconds": 60}
    cleared = await tasks_api.patch(f"/api/v1/tasks/definitions/{name}", json={"schedule": None})
    assert cleared.json()["schedule"] is None
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT schedule IS NULL FROM task_definitions WHERE name = :name"),
            {"name": name},
        )
    assert stored is True


async def _insert_definition(
    engine: AsyncEngine, tenant_id: uuid.UUID, name: str, schedule: object, age_s: float
) -> None:
    """Written as a row, bypassing the API's validation (as an older release could have)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO task_definitions (tenant_id, name, task, payload, schedule, "
                "created_at, next_due_at) VALUES (:tenant, :name, 'system.echo', "
                "CAST(:payload AS jsonb), CAST(:schedule AS jsonb), "
                "now() - make_interval(secs => :age), 'epoch')"
            ),
            {
                "tenant": tenant_id,
                "name": name,
                "payload": json.dumps({"message": "m"}),
                "schedule": json.dumps(schedule),
                "age": age_s,
            },
        )


async def test_one_tenants_broken_schedule_never_stops_another_tenants_schedule(
    api_client: httpx.AsyncClient,
    tasks_account: Account,
    beat: Beat,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = await sign_up(api_client, "Other")
    broken = [unique("zero-interval"), unique("bad-cron"), unique("no-kind")]
    for name, schedule in zip(
        broken, [{"every_seconds": 0}, {"cron": "not a cron"}, {"hourly": True}], strict=True
    ):
        await _insert_definition(engine, tasks_account.tenant_id, name, schedule, 10)
    healthy = unique("every-five")
    await _insert_definition(engine, other.tenant_id, healthy, {"every_seconds": 5}, 12)

    with caplog.at_level(logging.ERROR, logger="switchyard.platform.beat"):
        published = await beat.publish_due(datetime.now(UTC))
    assert published >= 1
    async with engine.connect() as connection:
        runs = (
            await connection.execute(
                text(
                    "SELECT r.tenant_id, r.submitted_by FROM task_runs r "
                    "JOIN task_definitions d ON d.id = r.definition_id WHERE d.name = :name"
                ),
                {"name": healthy},
            )
        ).all()
    assert [tuple(row) for row in runs] == [(other.tenant_id, "beat")]
    skipped = {
        getattr(record, "definition", None)
        for record in caplog.records
        if record.getMessage() == "scheduled definition skipped"
    }
    assert set(broken) <= skipped


async def _next_due(engine: AsyncEngine, name: str) -> tuple[datetime, datetime | None]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT created_at, next_due_at FROM task_definitions WHERE name = :name"),
                {"name": name},
            )
        ).one()
    return row.created_at, row.next_due_at


async def _due_names(beat: Beat, now: datetime) -> set[str]:
    async with beat.sessions() as session:
        return {definition.name for definition in await scheduled_definitions(session, now)}


async def test_beat_reads_only_due_definitions_and_a_new_schedule_at_once(
    tasks_api: httpx.AsyncClient, beat: Beat, engine: AsyncEngine
) -> None:
    name = unique("hourly")
    created = await tasks_api.post(
        "/api/v1/tasks/register",
        json={
            "name": name,
            "task": "system.echo",
            "payload": {"message": "m"},
            "schedule": {"every_seconds": 3600},
        },
    )
    assert created.status_code == 201, created.text
    created_at, next_due = await _next_due(engine, name)
    assert next_due == UNPLANNED  # due at once: beat works out its first tick
    now = datetime.now(UTC)
    assert name in await _due_names(beat, now)

    await beat.publish_due(now)  # not due for an hour: beat notes when it will be
    _, next_due = await _next_due(engine, name)
    assert next_due == created_at + timedelta(seconds=3600)
    assert name not in await _due_names(beat, now)  # read no more until then
    assert name in await _due_names(beat, created_at + timedelta(seconds=3600))

    patched = await tasks_api.patch(
        f"/api/v1/tasks/definitions/{name}", json={"schedule": {"every_seconds": 60}}
    )
    assert patched.status_code == 200, patched.text
    assert (await _next_due(engine, name))[1] == UNPLANNED  # the new schedule is due at once
    async with engine.begin() as connection:  # ...and it was made a minute ago
        created_at = await connection.scalar(
            text(
                "UPDATE task_definitions SET created_at = created_at - interval '61 seconds' "
                "WHERE name = :name RETURNING created_at"
            ),
            {"name": name},
        )
    published = await beat.publish_due(datetime.now(UTC))
    assert published >= 1  # other tests' definitions may be due too
    async with engine.connect() as connection:
        ticks = (
            await connection.execute(
                text(
                    "SELECT r.scheduled_for FROM task_runs r JOIN task_definitions d "
                    "ON d.id = r.definition_id WHERE d.name = :name"
                ),
                {"name": name},
            )
        ).scalars()
        assert list(ticks) == [created_at + timedelta(seconds=60)]
    # The claimed tick notes the next one.
    assert (await _next_due(engine, name))[1] == created_at + timedelta(seconds=120)

    cleared = await tasks_api.patch(f"/api/v1/tasks/definitions/{name}", json={"schedule": None})
    assert cleared.status_code == 200
    assert (await _next_due(engine, name))[1] is None


async def test_migration_turns_json_null_schedules_into_sql_null(
    create_database: DatabaseFactory,
) -> None:
    url = await create_database()
    await migrate(url, "0004")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            tenant = await connection.scalar(
                text("INSERT INTO tenants (name, slug) VALUES ('A', 'a') RETURNING id")
            )
            await connection.execute(
                text(
                    "INSERT INTO task_definitions (tenant_id, name, task, payload, schedule) "
                    "VALUES (:t, 'old', 'system.echo', '{}', 'null'::jsonb), "
                    "(:t, 'kept', 'system.echo', '{}', '{\"every_seconds\": 5}'::jsonb)"
                ),
                {"t": tenant},
            )
        await migrate(url)
        async with engine.connect() as connection:
            rows: dict[str, object] = dict(
                (
                    await connection.execute(
                        text("SELECT name, schedule FROM task_definitions ORDER BY name")
                    )
                ).all()
            )
            assert rows == {"kept": {"every_seconds": 5}, "old": None}
            with pytest.raises(Exception, match="schedule_object"):
                await connection.execute(
                    text(
                        "INSERT INTO task_definitions (tenant_id, name, task, payload, schedule) "
                        "VALUES (:t, 'new', 'system.echo', '{}', 'null'::jsonb)"
                    ),
                    {"t": tenant},
                )
    finally:
        await engine.dispose()


async def _heartbeat_until(path: Path, condition: str, within: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    content: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            content = json.loads(await asyncio.to_thread(path.read_text))
        except (OSError, ValueError):
            content = {}
        failed = content.get("failed_ticks")
        if isinstance(failed, int) and (failed >= 3 if condition == "failing" else failed == 0):
            return content
        await asyncio.sleep(0.1)
    raise AssertionError(f"heartbeat not {condition} within {within} s: {content}")


async def test_beat_is_unhealthy_while_its_ticks_keep_failing_and_healthy_after(
    make_settings: SettingsFactory, database_url: URL, broker_url: str, tmp_path: Path
) -> None:
    with relayed(database_url) as (relay, through_relay):
        settings = make_settings(
            database_url=through_relay.render_as_string(hide_password=False),
            celery_broker_url=broker_url,
            beat_tick_seconds=0.1,
            var_dir=tmp_path,
        )
        services = Services.create(settings, "beat")
        broker = Broker.create(settings)
        assert broker is not None
        heartbeat = settings.heartbeat_file("beat")
        beat = Beat(services, broker.publisher, load_task_modules(), heartbeat)
        stop = asyncio.Event()
        running = asyncio.create_task(beat.run(stop))
        try:
            await _heartbeat_until(heartbeat, "healthy")
            healthy, reason = await asyncio.to_thread(check, Role.BEAT, settings)
            assert healthy, reason

            relay.stop()
            await _heartbeat_until(heartbeat, "failing")
            healthy, reason = await asyncio.to_thread(check, Role.BEAT, settings)
            assert not healthy
            assert "ticks failed" in reason

            relay.start()
            await _heartbeat_until(heartbeat, "healthy")
            healthy, reason = await asyncio.to_thread(check, Role.BEAT, settings)
            assert healthy, reason
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await services.close()
            broker.close()


async def test_a_suspended_tenants_schedules_do_not_run(
    tasks_account: Account, beat: Beat, engine: AsyncEngine
) -> None:
    name = unique("suspended-every-second")
    await _insert_definition(engine, tasks_account.tenant_id, name, {"every_seconds": 1}, 5)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE tenants SET status = 'suspended' WHERE id = :id"),
            {"id": tasks_account.tenant_id},
        )
    await beat.publish_due(datetime.now(UTC))
    async with engine.connect() as connection:
        runs = await connection.scalar(
            text(
                "SELECT count(*) FROM task_runs r JOIN task_definitions d "
                "ON d.id = r.definition_id WHERE d.name = :name"
            ),
            {"name": name},
        )
    assert runs == 0
