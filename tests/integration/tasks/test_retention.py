"""Retention on the real PostgreSQL: final runs, dead letters and idempotency keys go when
they have outlived their setting (or their tenant's own), in batches, and everything else
stays — runs not final, runs whose dead letter is still archived, replays of expired runs.

Each test has a database of its own: retention deletes across every tenant."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.auth.service import ensure_superuser
from switchyard.domains import load_task_modules
from switchyard.platform.beat import Beat
from switchyard.platform.broker import Broker
from switchyard.platform.runs import retention
from switchyard.services.container import Services
from switchyard.settings import Settings
from tests.fixtures.accounts import login, sign_up
from tests.fixtures.gateway import SettingsFactory, running

FINAL = ("succeeded", "failed", "dead_lettered", "cancelled")
SUPERUSER_PASSWORD = "retention-superuser-pw-1"


class Ledger:
    """Rows written as they would be after some time: ages in days before now."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def tenant(self, **retention_days: int) -> uuid.UUID:
        async with self.engine.begin() as connection:
            tenant_id: uuid.UUID = await connection.scalar(
                text(
                    "INSERT INTO tenants (name, slug, run_retention_days, "
                    "dead_letter_retention_days) VALUES ('T', :slug, CAST(:runs AS int), "
                    "CAST(:letters AS int)) "
                    "RETURNING id"
                ),
                {
                    "slug": f"t-{uuid.uuid4().hex[:10]}",
                    "runs": retention_days.get("runs"),
                    "letters": retention_days.get("letters"),
                },
            )
        return tenant_id

    async def run(
        self,
        tenant_id: uuid.UUID,
        state: str = "succeeded",
        *,
        finished_days: float | None = None,
        created_days: float | None = None,
        key: str | None = None,
        replay_of: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """A run; a final one finished `finished_days` ago (and was created then too, unless
        `created_days` says otherwise)."""
        created = created_days if created_days is not None else (finished_days or 0.0)
        async with self.engine.begin() as connection:
            run_id: uuid.UUID = await connection.scalar(
                text(
                    "INSERT INTO task_runs (tenant_id, task, queue, payload, state, "
                    "created_at, started_at, finished_at, published_at, admitted_at, "
                    "idempotency_key, request_hash, replay_of) "
                    "VALUES (:tenant, 'system.echo', 'default', '{}', :state, "
                    "now() - make_interval(secs => :created * 86400), "
                    "now() - make_interval(secs => :created * 86400), "
                    "CASE WHEN :final THEN now() - make_interval(secs => :finished * 86400) END, "
                    "now(), now(), CAST(:key AS text), "
                    "CASE WHEN CAST(:key AS text) IS NOT NULL THEN 'h' END, "
                    "CAST(:replay_of AS uuid)) "
                    "RETURNING id"
                ),
                {
                    "tenant": tenant_id,
                    "state": state,
                    "created": created,
                    "final": state in FINAL,
                    "finished": finished_days or 0.0,
                    "key": key,
                    "replay_of": replay_of,
                },
            )
        return run_id

    async def letter(
        self,
        tenant_id: uuid.UUID,
        run_id: uuid.UUID | None,
        days: float,
        replayed_run_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        async with self.engine.begin() as connection:
            letter_id: uuid.UUID = await connection.scalar(
                text(
                    "INSERT INTO dead_letters (tenant_id, run_id, task, queue, payload, reason, "
                    "dead_lettered_at, headers, created_at, replayed_run_id) VALUES (:tenant, "
                    "CAST(:run AS uuid), 'system.echo', 'default', '{}', 'rejected', "
                    "now() - make_interval(secs => :days * 86400), '{}', "
                    "now() - make_interval(secs => :days * 86400), CAST(:replayed AS uuid)) "
                    "RETURNING id"
                ),
                {"tenant": tenant_id, "run": run_id, "days": days, "replayed": replayed_run_id},
            )
        return letter_id

    async def rows(self, sql: str, **values: Any) -> list[Any]:
        async with self.engine.connect() as connection:
            return list((await connection.execute(text(sql), values)).all())

    async def run_ids(self) -> set[uuid.UUID]:
        return {row.id for row in await self.rows("SELECT id FROM task_runs")}

    async def letter_ids(self) -> set[uuid.UUID]:
        return {row.id for row in await self.rows("SELECT id FROM dead_letters")}


@pytest.fixture
def ledger(own_engine: AsyncEngine) -> Ledger:
    return Ledger(own_engine)


def retention_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "run_retention_days": 30,
        "dead_letter_retention_days": 90,
        "idempotency_key_hours": 24,
        "retention_batch_rows": 2,  # several batches of each kind
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def test_final_runs_go_after_their_tenants_retention_and_the_rest_stay(
    ledger: Ledger, own_engine: AsyncEngine
) -> None:
    default = await ledger.tenant()
    long = await ledger.tenant(runs=365)
    forever = await ledger.tenant(runs=0)
    short = await ledger.tenant(runs=1)

    expired = {
        await ledger.run(default, state, finished_days=40) for state in FINAL[:2] + FINAL[3:]
    }
    expired.add(await ledger.run(long, finished_days=400))
    expired.add(await ledger.run(short, "failed", finished_days=2))
    kept = {
        await ledger.run(default, finished_days=10),
        await ledger.run(default, "queued", created_days=100),  # not final: never expires
        await ledger.run(default, "started", created_days=100),
        await ledger.run(default, "retrying", created_days=100),
        await ledger.run(long, "cancelled", finished_days=40),
        await ledger.run(forever, finished_days=3000),
        await ledger.run(short, finished_days=0.5),
        # A run delayed long ago that finished yesterday: the clock starts at its finish.
        await ledger.run(default, finished_days=1, created_days=60),
    }
    # A dead-lettered run whose letter is still archived stays while the letter does.
    lettered = await ledger.run(default, "dead_lettered", finished_days=40)
    letter = await ledger.letter(default, lettered, days=10)
    kept.add(lettered)
    # A replay of an expired run stays, no longer pointing at it; so does a letter whose
    # replay expired.
    original = await ledger.run(default, finished_days=40)
    replay = await ledger.run(default, finished_days=5, replay_of=original)
    replayed_expired = await ledger.run(default, finished_days=40)
    orphan_letter = await ledger.letter(default, None, days=5, replayed_run_id=replayed_expired)
    expired |= {original, replayed_expired}
    kept.add(replay)

    removed = await retention.expire(own_engine, retention_settings(), rest=False)

    assert removed.runs == len(expired)
    assert removed.dead_letters == 0
    assert await ledger.run_ids() == kept
    assert await ledger.letter_ids() == {letter, orphan_letter}
    (replay_row,) = await ledger.rows("SELECT replay_of FROM task_runs WHERE id = :id", id=replay)
    assert replay_row.replay_of is None
    (orphan,) = await ledger.rows(
        "SELECT replayed_run_id FROM dead_letters WHERE id = :id", id=orphan_letter
    )
    assert orphan.replayed_run_id is None
    # A second pass finds nothing more.
    again = await retention.expire(own_engine, retention_settings(), rest=False)
    assert again.total == 0


async def test_dead_letters_go_after_their_retention_and_their_runs_in_the_same_pass(
    ledger: Ledger, own_engine: AsyncEngine
) -> None:
    default = await ledger.tenant()
    keeps_letters = await ledger.tenant(letters=0)
    old_run = await ledger.run(default, "dead_lettered", finished_days=100)
    old_letter = await ledger.letter(default, old_run, days=100)
    young_run = await ledger.run(default, "dead_lettered", finished_days=100)
    young_letter = await ledger.letter(default, young_run, days=10)
    without_run = await ledger.letter(default, None, days=91)
    kept_run = await ledger.run(keeps_letters, "dead_lettered", finished_days=100)
    kept_letter = await ledger.letter(keeps_letters, kept_run, days=1000)

    removed = await retention.expire(own_engine, retention_settings(), rest=False)

    assert (removed.dead_letters, removed.runs) == (2, 1)
    assert await ledger.letter_ids() == {young_letter, kept_letter}
    assert await ledger.run_ids() == {young_run, kept_run}
    assert old_letter not in await ledger.letter_ids()
    assert without_run not in await ledger.letter_ids()


async def test_idempotency_keys_expire_once_their_run_is_final_and_can_be_used_again(
    ledger: Ledger, own_engine: AsyncEngine
) -> None:
    tenant = await ledger.tenant()
    stale = await ledger.run(tenant, finished_days=2, key="order-1")
    pending = await ledger.run(tenant, "queued", created_days=2, key="order-2")
    fresh = await ledger.run(tenant, finished_days=0.1, key="order-3")
    replay = await ledger.run(tenant, finished_days=2, key=f"replay:{uuid.uuid4()}")

    removed = await retention.expire(own_engine, retention_settings(), rest=False)

    assert removed.idempotency_keys == 1
    assert removed.runs == 0
    keys = {
        row.id: (row.idempotency_key, row.request_hash)
        for row in await ledger.rows("SELECT id, idempotency_key, request_hash FROM task_runs")
    }
    assert keys[stale] == (None, None)
    assert keys[pending][0] == "order-2"  # a retry of a pending run still finds it
    assert keys[fresh][0] == "order-3"
    assert keys[replay][0] is not None  # one run per dead letter, for as long as it lives
    # The expired key is free: a new run may take it (the unique constraint lets it in).
    again = await ledger.run(tenant, "queued", key="order-1")
    assert again != stale


async def test_zero_keeps_everything(ledger: Ledger, own_engine: AsyncEngine) -> None:
    tenant = await ledger.tenant()
    run_id = await ledger.run(tenant, "dead_lettered", finished_days=3000, key="k")
    await ledger.letter(tenant, None, days=3000)
    settings = retention_settings(
        run_retention_days=0, dead_letter_retention_days=0, idempotency_key_hours=0
    )

    removed = await retention.expire(own_engine, settings, rest=False)

    assert removed.total == 0
    assert await ledger.run_ids() == {run_id}
    assert len(await ledger.letter_ids()) == 1


async def test_a_run_locked_elsewhere_is_skipped_not_waited_for(
    ledger: Ledger, own_engine: AsyncEngine
) -> None:
    tenant = await ledger.tenant()
    held = await ledger.run(tenant, finished_days=40)
    free = {await ledger.run(tenant, finished_days=40) for _ in range(3)}
    async with own_engine.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(
            text("SELECT 1 FROM task_runs WHERE id = :id FOR UPDATE"), {"id": held}
        )
        # A pass that waited for the lock would hang here until the holder let go.
        removed = await asyncio.wait_for(
            retention.expire(own_engine, retention_settings(), rest=False), timeout=60
        )
        assert removed.runs == len(free)
        assert await ledger.run_ids() == {held}
        await transaction.rollback()
    later = await retention.expire(own_engine, retention_settings(), rest=False)
    assert later.runs == 1
    assert await ledger.run_ids() == set()


async def test_the_leading_beat_runs_retention_in_the_background(
    ledger: Ledger,
    make_settings: SettingsFactory,
    broker_url: str,
    own_database: URL,
    tmp_path: Path,
) -> None:
    tenant = await ledger.tenant()
    await ledger.run(tenant, finished_days=31)
    recent = await ledger.run(tenant, finished_days=29)
    settings = make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        celery_broker_url=broker_url,
    )
    services = Services.create(settings, "beat")
    broker = Broker.create(settings)
    assert broker is not None
    try:
        beat = Beat(services, broker.publisher, load_task_modules(), tmp_path / "beat.heartbeat")
        await beat.tick()
        pass_ = beat.retention
        assert pass_ is not None  # the pass runs beside the tick, not in it
        removed = await asyncio.wait_for(pass_, timeout=60)
        assert removed is not None
        assert removed.runs == 1
        assert await ledger.run_ids() == {recent}
        await beat._resign()
        assert beat.retention is None
    finally:
        await services.close()
        broker.close()


async def test_the_superuser_sets_a_tenants_retention(
    make_settings: SettingsFactory, engine: AsyncEngine
) -> None:
    settings = make_settings(
        first_superuser_email=f"root-{uuid.uuid4().hex[:6]}@example.com",
        first_superuser_password=SUPERUSER_PASSWORD,
    )
    async with async_sessionmaker(engine).begin() as session:
        await ensure_superuser(session, settings)
    async with running(create_app(settings)) as api_client:
        await _set_retention(api_client, settings, engine)


async def _set_retention(
    api_client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    assert settings.first_superuser_email is not None
    tokens = await login(api_client, settings.first_superuser_email, SUPERUSER_PASSWORD)
    root = {"Authorization": f"Bearer {tokens['access_token']}"}
    account = await sign_up(api_client)
    url = f"/api/v1/tenants/{account.tenant_id}"

    refused = await api_client.patch(url, json={"run_retention_days": 365}, headers=account.headers)
    assert refused.status_code == 403
    for body, field in (
        ({"run_retention_days": -1}, "body.run_retention_days"),
        ({"dead_letter_retention_days": 3651}, "body.dead_letter_retention_days"),
        ({"run_retention_days": "a year"}, "body.run_retention_days"),
    ):
        invalid = await api_client.patch(url, json=body, headers=root)
        assert invalid.status_code == 422, invalid.text
        assert invalid.headers["content-type"] == "application/problem+json"
        assert [error["field"] for error in invalid.json()["errors"]] == [field]
    empty = await api_client.patch(url, json={}, headers=root)
    assert empty.status_code == 422

    capped = await api_client.patch(url, json={"max_runs_in_flight": 7}, headers=root)
    assert capped.status_code == 200
    changed = await api_client.patch(
        url, json={"run_retention_days": 365, "dead_letter_retention_days": 0}, headers=root
    )
    assert changed.status_code == 200, changed.text
    # Only the fields given change: the cap set before stays.
    assert {
        key: changed.json()[key]
        for key in ("max_runs_in_flight", "run_retention_days", "dead_letter_retention_days")
    } == {"max_runs_in_flight": 7, "run_retention_days": 365, "dead_letter_retention_days": 0}
    reset = await api_client.patch(url, json={"run_retention_days": None}, headers=root)
    assert reset.json()["run_retention_days"] is None
    assert reset.json()["dead_letter_retention_days"] == 0
    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                text(
                    "SELECT max_runs_in_flight, run_retention_days, dead_letter_retention_days "
                    "FROM tenants WHERE id = :id"
                ),
                {"id": account.tenant_id},
            )
        ).one()
    assert tuple(stored) == (7, None, 0)


async def _workflow(
    ledger: Ledger, tenant_id: uuid.UUID, *, ended_days: float | None, runs: int = 3
) -> tuple[uuid.UUID, set[uuid.UUID]]:
    """A workflow run (ended `ended_days` ago, or still running) with one step of `runs`
    runs, all finished as long ago as it ended (or 40 days ago, for a running one)."""
    async with ledger.engine.begin() as connection:
        definition = await connection.scalar(
            text(
                "INSERT INTO workflow_definitions (tenant_id, name, version, steps, digest) "
                "VALUES (:tenant, :name, 1, '[]', 'd') RETURNING id"
            ),
            {"tenant": tenant_id, "name": f"w-{uuid.uuid4().hex[:8]}"},
        )
        workflow = await connection.scalar(
            text(
                "INSERT INTO workflow_runs (tenant_id, definition_id, state, input, steps_left, "
                "finished_at) VALUES (:tenant, :definition, :state, 'null', :left, "
                "CASE WHEN :ended THEN now() - make_interval(secs => :days * 86400) END) "
                "RETURNING id"
            ),
            {
                "tenant": tenant_id,
                "definition": definition,
                "state": "running" if ended_days is None else "succeeded",
                "left": 1 if ended_days is None else 0,
                "ended": ended_days is not None,
                "days": ended_days or 0.0,
            },
        )
        step = await connection.scalar(
            text(
                "INSERT INTO workflow_steps (workflow_run_id, tenant_id, name, state, "
                "parents_left) VALUES (:workflow, :tenant, 's', 'running', 0) RETURNING id"
            ),
            {"workflow": workflow, "tenant": tenant_id},
        )
    run_ids = set()
    for index in range(runs):
        run_id = await ledger.run(tenant_id, finished_days=ended_days or 40)
        async with ledger.engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE task_runs SET workflow_step_id = :step, item_index = :index "
                    "WHERE id = :id"
                ),
                {"step": step, "index": index, "id": run_id},
            )
        run_ids.add(run_id)
    return workflow, run_ids


async def test_a_workflow_run_goes_as_one_unit_with_its_steps_runs(
    ledger: Ledger, own_engine: AsyncEngine
) -> None:
    tenant = await ledger.tenant()
    gone, gone_runs = await _workflow(ledger, tenant, ended_days=40)
    # Its runs are old, but it is still running: nothing of it goes.
    running, running_runs = await _workflow(ledger, tenant, ended_days=None)
    recent, recent_runs = await _workflow(ledger, tenant, ended_days=5)
    # A dead letter of one of its runs keeps it all.
    lettered, lettered_runs = await _workflow(ledger, tenant, ended_days=40)
    letter = await ledger.letter(tenant, min(lettered_runs), days=1)

    removed = await retention.expire(own_engine, retention_settings(), rest=False)

    assert removed.workflow_runs == 1
    assert removed.runs == 0  # no step run goes alone
    workflows = {row.id for row in await ledger.rows("SELECT id FROM workflow_runs")}
    assert gone not in workflows
    assert {running, recent, lettered} <= workflows
    left = await ledger.run_ids()
    assert not gone_runs & left  # with its workflow run, through its steps
    assert running_runs | recent_runs | lettered_runs <= left
    assert (
        await ledger.rows("SELECT 1 FROM workflow_steps WHERE workflow_run_id = :id", id=gone) == []
    )
    assert letter in await ledger.letter_ids()
