"""The ledger's hot paths, as the product runs them, and a ledger seeded at any size.

Shared by `bench.ledger_scale` (their latency at 10,000 and 10 million runs) and
`tests/integration/db/test_hot_path_plans.py` (their plans use their indexes). Each hot query
calls the product's own function (a repository, the ledger, admission, beat, retention), so
what is measured and explained is the SQL the product sends: `captured` records it, `plan`
asks PostgreSQL how it would run it.

Seeding (`seed_tenants`, `seed_runs`, `seed_live`, `seed_extras`) is `generate_series` in
SQL, a million rows a statement. History (`seed_runs`) is final runs, mostly succeeded: one in
ten finished 31 to 40 days ago (expired at the default RUN_RETENTION_DAYS of 30), the rest
within the last 30 days; a third of the runs of the last two days carry idempotency keys. What
is live (`seed_live`) does not grow with history: each tenant has 4 runs queued in the broker,
2 waiting for its share and 1 started, whatever the ledger's size.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from switchyard.db.models import RunState
from switchyard.db.pagination import encode_cursor
from switchyard.platform.beat import scheduled_definitions
from switchyard.platform.runs import admission, ledger, retention
from switchyard.settings import Settings
from switchyard.tasks import repository, service

TENANT_SLUG = "ledger-"
CHUNK = 1_000_000

_TENANTS = text(
    "INSERT INTO tenants (name, slug) "
    "SELECT 'Ledger ' || k, :prefix || lpad(k::text, 6, '0') "
    "FROM generate_series(0, CAST(:n AS int) - 1) AS k "
    "ON CONFLICT (slug) DO NOTHING"
)
# Row i of a chunk starting at :first; `r` decides its state, `i % 10 = 0` makes it expired.
_RUNS = text(
    """
    WITH p AS (
        SELECT CAST(:now AS timestamptz) AS now, CAST(:first AS bigint) AS first,
               CAST(:n AS bigint) AS n, CAST(:tenants AS bigint) AS tenants
    ),
    t AS (
        SELECT id, row_number() OVER (ORDER BY slug) - 1 AS k FROM tenants
        WHERE slug LIKE :prefix || '%'
    ),
    s AS (
        SELECT i, random() AS r,
               CASE WHEN i % 10 = 0
                    THEN p.now - interval '31 days' - random() * interval '9 days'
                    ELSE p.now - random() * interval '30 days' + interval '1 minute' END AS created
        FROM p, generate_series(p.first, p.first + p.n - 1) AS i
    ),
    v AS (
        SELECT s.*,
               CASE WHEN i % 10 = 0 OR r < 0.92 THEN 'succeeded' WHEN r < 0.97 THEN 'failed'
                    WHEN r < 0.98 THEN 'dead_lettered' ELSE 'cancelled' END AS kind
        FROM s
    )
    INSERT INTO task_runs (id, tenant_id, task, queue, payload, state, attempts, result,
                           error_type, error_message, created_at, updated_at, started_at,
                           finished_at, published_at, admitted_at, idempotency_key,
                           request_hash, submitted_by)
    SELECT gen_random_uuid(), t.id,
           CASE WHEN i % 997 = 0 THEN 'reports.rare' ELSE 'jobs.task_' || (i % 19) END,
           'default', jsonb_build_object('n', i, 'text', 'a payload of a typical size'),
           kind, 1,
           CASE WHEN kind = 'succeeded' THEN '{"ok": true, "tokens": 1234}'::jsonb END,
           CASE WHEN kind IN ('failed', 'dead_lettered') THEN 'TimeoutError' END,
           CASE WHEN kind IN ('failed', 'dead_lettered') THEN 'the upstream did not answer' END,
           created, created, created + interval '1 second', created + interval '3 seconds',
           created, created,
           CASE WHEN created > p.now - interval '2 days' AND i % 3 = 0 THEN 'key-' || i END,
           CASE WHEN created > p.now - interval '2 days' AND i % 3 = 0 THEN md5(i::text) END,
           'api-key:seed'
    FROM p CROSS JOIN v JOIN t ON t.k = v.i % p.tenants
    """
)
# Each tenant's live runs (of tenants `:low` <= k < `:high` in slug order): 4 queued in the
# broker (admitted, published), 2 waiting for its share, 1 started.
_LIVE = text(
    """
    WITH t AS (
        SELECT id, row_number() OVER (ORDER BY slug) - 1 AS k FROM tenants
        WHERE slug LIKE :prefix || '%'
    )
    INSERT INTO task_runs (id, tenant_id, task, queue, payload, state, attempts, created_at,
                           updated_at, started_at, published_at, admitted_at, submitted_by)
    SELECT gen_random_uuid(), t.id, 'jobs.task_' || j, 'default', jsonb_build_object('n', j),
           CASE WHEN j = 7 THEN 'started' ELSE 'queued' END,
           CASE WHEN j = 7 THEN 1 ELSE 0 END,
           now() - j * interval '1 minute', now(),
           CASE WHEN j = 7 THEN now() END,
           CASE WHEN j IN (5, 6) THEN NULL ELSE now() - j * interval '1 minute' END,
           CASE WHEN j IN (5, 6) THEN NULL ELSE now() - j * interval '1 minute' END,
           'api-key:seed'
    FROM t CROSS JOIN generate_series(1, 7) AS j
    WHERE t.k >= CAST(:low AS bigint) AND t.k < CAST(:high AS bigint)
    """
)
# A share of the dead-lettered runs (`:tenths` in ten) has its letter still archived; half of
# those letters were archived long ago (expired at the default 90 days).
_LETTERS = text(
    """
    INSERT INTO dead_letters (tenant_id, run_id, task, queue, payload, reason, last_error,
                              attempts, dead_lettered_at, headers, created_at, updated_at)
    SELECT tenant_id, id, task, queue, payload, 'delivery_limit', error_message, 5,
           finished_at, '{}'::jsonb, archived, archived
    FROM task_runs AS r
    -- Half of them archived long before (expired at the default 90 days).
    CROSS JOIN LATERAL (
        SELECT CASE WHEN abs(hashtext(r.id::text)) % 2 = 0 THEN r.finished_at - interval '90 days'
                    ELSE r.finished_at END AS archived
    ) AS a
    WHERE state = 'dead_lettered' AND abs(hashtext(id::text)) % 10 < :tenths
      AND NOT EXISTS (SELECT 1 FROM dead_letters AS d WHERE d.run_id = r.id)
    """
)
# Twenty definitions a tenant, five of them hourly, their next tick an hour or two ahead (as
# beat leaves them; none comes due while the benchmark runs).
_DEFINITIONS = text(
    """
    INSERT INTO task_definitions (tenant_id, name, task, payload, schedule, next_due_at)
    SELECT t.id, 'definition-' || j, 'system.echo', '{"message": "hi"}'::jsonb,
           CASE WHEN j % 4 = 0 THEN '{"every_seconds": 3600}'::jsonb END,
           CASE WHEN j % 4 = 0 THEN now() + interval '1 hour' + random() * interval '1 hour' END
    FROM tenants AS t CROSS JOIN generate_series(0, 19) AS j
    WHERE t.slug LIKE :prefix || '%'
    ON CONFLICT DO NOTHING
    """
)
_SECONDARY_INDEXES = text(
    """
    SELECT i.indexname, i.indexdef FROM pg_indexes AS i
    WHERE i.tablename = 'task_runs' AND NOT EXISTS (
        SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname
    )
    """
)


async def seed_tenants(engine: AsyncEngine, count: int) -> list[uuid.UUID]:
    """`count` tenants (slugs ledger-000000...), made once; their ids in slug order."""
    async with engine.begin() as connection:
        await connection.execute(_TENANTS, {"prefix": TENANT_SLUG, "n": count})
        rows = await connection.execute(
            text("SELECT id FROM tenants WHERE slug LIKE :prefix || '%' ORDER BY slug"),
            {"prefix": TENANT_SLUG},
        )
        return list(rows.scalars())


async def seed_runs(
    engine: AsyncEngine,
    runs: int,
    *,
    first: int = 0,
    tenants: int,
    now: datetime,
    rebuild_indexes: bool = False,
    progress: Callable[[int], None] = lambda _: None,
    slug_prefix: str = TENANT_SLUG,
) -> None:
    """Runs `first` .. `first + runs - 1`, round robin over the seeded tenants (`tenants` of
    them, their slugs starting with `slug_prefix`). With
    `rebuild_indexes`, the secondary indexes are dropped first and built again after (much
    faster for millions of rows than keeping them up to date row by row)."""
    rebuilt: list[str] = []
    if rebuild_indexes:
        async with engine.begin() as connection:
            for name, definition in (await connection.execute(_SECONDARY_INDEXES)).all():
                rebuilt.append(definition)
                await connection.execute(text(f'DROP INDEX "{name}"'))
    done = 0
    while done < runs:
        n = min(CHUNK, runs - done)
        async with engine.begin() as connection:
            await connection.execute(
                _RUNS,
                {
                    "prefix": slug_prefix,
                    "first": first + done,
                    "n": n,
                    "now": now,
                    "tenants": tenants,
                },
            )
        done += n
        progress(done)
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("SET maintenance_work_mem = '1GB'"))
        for definition in rebuilt:
            await connection.execute(text(definition))


async def seed_live(engine: AsyncEngine, low: int, high: int) -> None:
    """The live runs of the seeded tenants `low` <= k < `high` (in slug order)."""
    async with engine.begin() as connection:
        await connection.execute(_LIVE, {"prefix": TENANT_SLUG, "low": low, "high": high})


async def seed_extras(engine: AsyncEngine, letters_in_ten: int = 1) -> None:
    """Dead letters (of `letters_in_ten` dead-lettered runs in ten) and definitions for the
    seeded runs and tenants, then VACUUM ANALYZE (the planner's statistics, and the
    visibility map index-only scans need)."""
    async with engine.begin() as connection:
        await connection.execute(_LETTERS, {"tenths": letters_in_ten})
        await connection.execute(_DEFINITIONS, {"prefix": TENANT_SLUG})
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("task_runs", "dead_letters", "task_definitions", "tenants"):
            await connection.execute(text(f"VACUUM (ANALYZE) {table}"))


@dataclass(frozen=True)
class Sample:
    """What one call of a hot query is about: a tenant, one of its final runs, one of its keys
    (or an unused one), its runs queued in the broker, the cursor of its runs' second page."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    created_at: datetime
    key: str
    in_flight: tuple[uuid.UUID, ...]
    page_two: str


_BY_TENANT = (
    "SELECT tenant_id, {columns} FROM task_runs WHERE tenant_id = ANY(:tenants) AND {where}"
)


async def samples(
    engine: AsyncEngine, count: int, tenants: list[uuid.UUID], seed: int = 7
) -> list[Sample]:
    """`count` samples over `tenants`: a random final run of one of them, and its tenant's
    key, runs in flight and second page."""

    async def rows(connection: AsyncConnection, columns: str, where: str) -> list[Any]:
        statement = text(_BY_TENANT.format(columns=columns, where=where))
        return list((await connection.execute(statement, {"tenants": tenants})).all())

    async with engine.connect() as connection:
        finals = await rows(
            connection,
            "id, created_at",
            "state = 'succeeded' AND finished_at > now() - interval '29 days' "
            f"ORDER BY random() LIMIT {int(count)}",
        )
        keys: dict[uuid.UUID, str] = {}
        for tenant_id, key in await rows(
            connection, "idempotency_key", "idempotency_key IS NOT NULL"
        ):
            keys.setdefault(tenant_id, key)
        flying: dict[uuid.UUID, list[uuid.UUID]] = {}
        for tenant_id, run_id in await rows(
            connection, "id", "admitted_at IS NOT NULL AND state = 'queued'"
        ):
            flying.setdefault(tenant_id, []).append(run_id)
        pages: dict[uuid.UUID, str] = {}
        for tenant_id in {row[0] for row in finals}:
            created_at, run_id = (
                await connection.execute(
                    text(
                        "SELECT created_at, id FROM task_runs WHERE tenant_id = :tenant "
                        "ORDER BY created_at DESC, id DESC OFFSET 49 LIMIT 1"
                    ),
                    {"tenant": tenant_id},
                )
            ).one()
            pages[tenant_id] = encode_cursor(created_at, run_id)
    sampler = random.Random(seed)  # noqa: S311 - a benchmark's sampling, not a secret
    sampler.shuffle(finals)
    return [
        Sample(
            tenant_id=tenant_id,
            run_id=run_id,
            created_at=created_at,
            key=keys.get(tenant_id, f"unused-{uuid.uuid4()}"),
            in_flight=tuple(flying.get(tenant_id, [])[:10]),
            page_two=pages[tenant_id],
        )
        for tenant_id, run_id, created_at in finals
    ]


Call = Callable[[AsyncConnection, AsyncSession, Sample], Awaitable[object]]


@dataclass(frozen=True)
class HotQuery:
    name: str
    call: Call
    # Each must appear in the plan of one of the statements the call sends.
    indexes: tuple[str, ...]
    # A batch (retention): its time is compared per 1,000 rows it removed, since how many
    # have expired at a moment differs between ledgers.
    per_rows: bool = False


def _new_run(sample: Sample) -> ledger.NewRun:
    return ledger.NewRun(
        id=uuid.uuid4(),
        tenant_id=sample.tenant_id,
        task="jobs.task_1",
        definition_id=None,
        queue="default",
        payload={"n": 1},
        state=RunState.QUEUED,
        attempts=0,
        eta=None,
        idempotency_key=f"new-{uuid.uuid4()}",
        request_hash="0" * 64,
        request_id=None,
        submitted_by="bench",
        replay_of=None,
    )


def _page(**filters: Any) -> Call:
    async def call(_: AsyncConnection, session: AsyncSession, sample: Sample) -> object:
        runs = repository.RunRepository(session, sample.tenant_id)
        values = {"state": None, "task": None, "cursor": None, "limit": 50, **filters}
        for name, value in list(values.items()):
            if callable(value):
                values[name] = value(sample)
        return await runs.page_of(**values)

    return call


def _retention(kind: str) -> Call:
    async def call(connection: AsyncConnection, _: AsyncSession, __: Sample) -> object:
        settings = Settings(_env_file=None, environment="test")
        (batch,) = (found for found in retention.batches(settings) if found.kind == kind)
        return await connection.execute(batch.statement, batch.values)

    return call


async def _key(_: AsyncConnection, session: AsyncSession, sample: Sample) -> object:
    return await repository.RunRepository(session, sample.tenant_id).by_idempotency_key(sample.key)


async def _store(connection: AsyncConnection, _: AsyncSession, sample: Sample) -> object:
    return await admission.store(connection, [_new_run(sample)], admission.Policy())


async def _claim(connection: AsyncConnection, _: AsyncSession, sample: Sample) -> object:
    run_id = sample.in_flight[0] if sample.in_flight else sample.run_id
    return await ledger.claim(connection, run_id, redelivered=False, tenant_id=sample.tenant_id)


async def _claim_group(connection: AsyncConnection, _: AsyncSession, sample: Sample) -> object:
    pairs = [(run_id, sample.tenant_id) for run_id in sample.in_flight or (sample.run_id,)]
    return await ledger.claim_group(connection, pairs, redelivered=False)


async def _finish(connection: AsyncConnection, _: AsyncSession, sample: Sample) -> object:
    outcome = ledger.Finish(sample.run_id, RunState.SUCCEEDED, {"ok": 1})
    return await ledger.finish_group(connection, [outcome])  # one alone: the fault path's


async def _finish_group(connection: AsyncConnection, _: AsyncSession, sample: Sample) -> object:
    outcomes = [
        ledger.Finish(run_id, RunState.SUCCEEDED, {"ok": 1})
        for run_id in sample.in_flight or (sample.run_id,)
    ]
    return await ledger.finish_group(connection, outcomes)


async def _get(_: AsyncConnection, session: AsyncSession, sample: Sample) -> object:
    return await service.get_run(session, sample.tenant_id, sample.run_id)


async def _share(connection: AsyncConnection, _: AsyncSession, sample: Sample) -> object:
    return await admission.share(connection, sample.tenant_id, admission.Policy())


async def _due(_: AsyncConnection, session: AsyncSession, __: Sample) -> object:
    return await scheduled_definitions(session, datetime.now(UTC))


async def _outbox(_: AsyncConnection, session: AsyncSession, __: Sample) -> object:
    return await ledger.unpublished(session, datetime.now(UTC) - timedelta(seconds=15))


async def _letters(_: AsyncConnection, session: AsyncSession, sample: Sample) -> object:
    return await repository.DeadLetterRepository(session, sample.tenant_id).newest(50)


PK = "pk_task_runs"
BY_TENANT = "ix_task_runs_tenant_id_created_at"
HOT_QUERIES: tuple[HotQuery, ...] = (
    HotQuery("submit: idempotency key", _key, ("uq_task_runs_tenant_id_idempotency_key",)),
    HotQuery(
        "submit: store and admit",
        _store,
        (
            "uq_task_runs_tenant_id_idempotency_key",
            "ix_task_runs_waiting",
            "ix_task_runs_in_flight",
        ),
    ),
    HotQuery("claim", _claim, (PK,)),
    HotQuery("claim a group", _claim_group, (PK,)),
    HotQuery("outcome", _finish, (PK,)),
    HotQuery("outcomes of a group", _finish_group, (PK,)),
    HotQuery("get run", _get, (PK,)),
    HotQuery("list runs: newest", _page(), (BY_TENANT,)),
    HotQuery(
        "list runs: state=failed",
        _page(state=RunState.FAILED),
        ("ix_task_runs_tenant_id_state_created_at",),
    ),
    HotQuery(
        "list runs: task=reports.rare",
        _page(task="reports.rare"),
        ("ix_task_runs_tenant_id_task_created_at",),
    ),
    HotQuery(
        "list runs: since/until (a week)",
        _page(
            since=lambda sample: sample.created_at - timedelta(days=7),
            until=lambda sample: sample.created_at,
        ),
        (BY_TENANT,),
    ),
    HotQuery(
        "list runs: next page (cursor)",
        _page(cursor=lambda sample: sample.page_two),
        (BY_TENANT,),
    ),
    HotQuery("list runs: share", _share, ("ix_task_runs_waiting", "ix_task_runs_in_flight")),
    HotQuery("beat: due definitions", _due, ("ix_task_definitions_due",)),
    HotQuery("beat: outbox scan", _outbox, ("ix_task_runs_outbox",)),
    HotQuery("dead letters: list", _letters, ("ix_dead_letters_tenant_id_created_at",)),
    HotQuery("retention: runs batch", _retention("runs"), ("ix_task_runs_finished",), True),
    HotQuery(
        "retention: dead letters batch",
        _retention("dead_letters"),
        ("ix_dead_letters_tenant_id_created_at",),
        True,
    ),
    HotQuery(
        "retention: keys batch", _retention("idempotency_keys"), ("ix_task_runs_keyed",), True
    ),
)

_capturing: ContextVar[list[tuple[str, Any]] | None] = ContextVar("capturing", default=None)


def install_capture(engine: AsyncEngine) -> None:
    """Record the statements sent on `engine` while `captured` is open."""

    def record(_: Any, __: Any, statement: str, parameters: Any, *___: Any) -> None:
        sent = _capturing.get()
        if sent is not None:
            sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)


@contextlib.contextmanager
def captured() -> Iterator[list[tuple[str, Any]]]:
    sent: list[tuple[str, Any]] = []
    token = _capturing.set(sent)
    try:
        yield sent
    finally:
        _capturing.reset(token)


@contextlib.asynccontextmanager
async def rolled_back(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, AsyncSession]]:
    """A connection and a session on it, in a transaction that is rolled back: a hot query
    that writes (a claim, an outcome, a retention batch) leaves the ledger as it was."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(bind=connection, expire_on_commit=False)
        try:
            yield connection, session
        finally:
            await session.close()
            await transaction.rollback()


_EXPLAINED = ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")


async def plan(engine: AsyncEngine, query: HotQuery, sample: Sample) -> list[dict[str, Any]]:
    """The plans (EXPLAIN, JSON) of every statement the hot query sends for `sample`."""
    async with rolled_back(engine) as (connection, session):
        with captured() as sent:
            await query.call(connection, session, sample)
        plans = []
        for statement, parameters in sent:
            if not statement.lstrip().upper().startswith(_EXPLAINED):
                continue
            if "pg_advisory" in statement:
                continue
            explained = await connection.exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + statement, parameters
            )
            plans.append(explained.scalar_one()[0]["Plan"])
        return plans


def nodes(plan_: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan_
    for child in plan_.get("Plans", ()):
        yield from nodes(child)


def indexes_used(plans: list[dict[str, Any]]) -> set[str]:
    """Indexes the plans scan, and the arbiter index of an INSERT ... ON CONFLICT."""
    used: set[str] = set()
    for root in plans:
        for node in nodes(root):
            if "Index Name" in node:
                used.add(node["Index Name"])
            used.update(node.get("Conflict Arbiter Indexes", ()))
    return used


def sequential_scans(plans: list[dict[str, Any]]) -> set[str]:
    return {
        node["Relation Name"]
        for root in plans
        for node in nodes(root)
        if node["Node Type"] == "Seq Scan"
    }
