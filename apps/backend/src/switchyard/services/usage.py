"""Usage, recorded where it happens: what each tenant used, per hour (UTC), by meter and
subject, in `usage_counters` on the main database (the analytics bind gets a copy,
`ship_to_bind`). Each use adds to its hour's counter in one upsert, so the figures are sums
with nothing to aggregate at read time beyond the hours asked for.

Exactly once: a use is added in the transaction of what it counts where there is one (a run's
attempt, in the ledger's outcome statement: platform.runs.ledger.finish_group), else once
after it happened (an LLM call's tokens, as the provider reported them); a write repeated
after a lost race for locks was rolled back whole, and one whose fate is unknown (a connection
lost mid-commit) is not repeated. So a figure can fall short after such a failure, never
count twice. Recording never fails what it counts: a write that fails is logged and counted
(`switchyard_usage_writes_failed_total`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Table, column, exists, func, select, tuple_, values
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import BigInteger, String, Uuid

from switchyard.db.binds import Bind
from switchyard.db.binds.models import UsageCounterCopy
from switchyard.db.engine import in_transaction
from switchyard.db.models import Tenant, UsageCounter

logger = logging.getLogger(__name__)

WRITES_FAILED = Counter(
    "switchyard_usage_writes_failed_total",
    "Usage records that could not be written (the use itself went on); their figures fall short",
)
FLUSH_SECONDS = 1.0  # counted uses (a hot path's) are written at least this often
MAX_SUBJECT = 200
# Name of the bind usage is copied to, when DATABASE_BINDS has one (its models' __bind_key__).
ANALYTICS = "analytics"
SHIP_BATCH = 1000
# A counter's `updated_at` is its transaction's start: one that committed this much later than
# it began, after a copy had passed its time, is still copied by the next.
SHIP_OVERLAP = timedelta(minutes=5)


class Meter(StrEnum):
    """What is counted, in which unit. The subject says of what: a model, a task, a provider."""

    LLM_PROMPT_TOKENS = "llm.prompt_tokens"  # subject: "<purpose>/<model>"
    LLM_COMPLETION_TOKENS = "llm.completion_tokens"  # subject: "<purpose>/<model>"
    EMBEDDING_TOKENS = "embedding.tokens"  # the provider's count; subject: the model
    EMBEDDING_TEXTS = "embedding.texts"  # texts embedded; subject: the embedder
    RUNS_ACCEPTED = "run.accepted"  # runs a submission stored; subject: the task
    RUN_ATTEMPTS = "run.attempts"  # attempts that ended, however; subject: the task
    RUN_MILLISECONDS = "run.milliseconds"  # the handler's time per attempt; subject: the task
    DOCUMENTS = "documents"  # a stock: +1 an upload, -1 a deletion; subject: ""
    STORED_BYTES = "stored.bytes"  # a stock, as documents; subject: ""
    SEARCH_QUERIES = "search.queries"  # subject: "search" or "answer"


STOCKS = frozenset({Meter.DOCUMENTS, Meter.STORED_BYTES})


@dataclass(frozen=True)
class Use:
    tenant_id: uuid.UUID
    meter: Meter
    subject: str
    quantity: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (str(self.tenant_id), self.meter.value, self.subject[:MAX_SUBJECT])


_COUNTERS: Table = UsageCounter.__table__  # type: ignore[assignment]
# The hour of the database's clock, in UTC, whatever the session's time zone.
THIS_HOUR = func.date_trunc("hour", func.now(), "UTC")


def merged(uses: Iterable[Use]) -> list[tuple[uuid.UUID, str, str, int]]:
    """One row per counter, in key order: concurrent writers lock counters in one order."""
    totals: dict[tuple[str, str, str], int] = {}
    for use in uses:
        if use.quantity:
            totals[use.key] = totals.get(use.key, 0) + use.quantity
    return [
        (uuid.UUID(tenant), meter, subject, quantity)
        for (tenant, meter, subject), quantity in sorted(totals.items())
    ]


def add_from(rows: Select[Any]) -> Insert:
    """Add the (tenant_id, meter, subject, quantity) rows of `rows`, one per counter, to this
    hour's counters, in counter order (byte order, whatever the database's collation): every
    writer locks counters in one order."""
    given = rows.subquery("used")
    ordered = select(
        given.c.tenant_id, THIS_HOUR, given.c.meter, given.c.subject, given.c.quantity
    ).order_by(
        sql_cast(given.c.tenant_id, String).collate("C"),
        given.c.meter.collate("C"),
        given.c.subject.collate("C"),
    )
    statement = insert(_COUNTERS).from_select(
        ["tenant_id", "hour", "meter", "subject", "quantity"], ordered
    )
    return statement.on_conflict_do_update(
        index_elements=["tenant_id", "hour", "meter", "subject"],
        set_={
            "quantity": _COUNTERS.c.quantity + statement.excluded.quantity,
            "updated_at": func.now(),
        },
    )


def add_statement(rows: Sequence[tuple[uuid.UUID, str, str, int]]) -> Insert:
    """The uses of tenants that exist: a use counted as its tenant is deleted is dropped, not
    the whole write with it (one write holds many tenants' uses)."""
    given = values(
        column("tenant_id", Uuid),
        column("meter", String),
        column("subject", String),
        column("quantity", BigInteger),
        name="uses",
    ).data(list(rows))
    return add_from(
        select(
            given.c.tenant_id,
            sql_cast(given.c.meter, String).label("meter"),
            sql_cast(given.c.subject, String).label("subject"),
            sql_cast(given.c.quantity, BigInteger).label("quantity"),
        ).where(exists().where(Tenant.id == given.c.tenant_id))
    )


async def add_in(session: AsyncSession | AsyncConnection, *uses: Use) -> None:
    """Add `uses` in the caller's transaction: counted if, and only if, it commits."""
    rows = merged(uses)
    if rows:
        await session.execute(add_statement(rows))


class UsageRecorder:
    """Writes uses to the main database: `add` at once (a use worth a write of its own: an LLM
    call, an upload), `count` within FLUSH_SECONDS, several in one statement (a hot path's:
    a search). Without a database it records nothing."""

    def __init__(self, engine: AsyncEngine | None, *, flush_seconds: float = FLUSH_SECONDS):
        self.engine = engine
        self.flush_seconds = flush_seconds
        self._pending: list[Use] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, *uses: Use) -> None:
        await self._write(list(uses))

    def count(self, use: Use) -> None:
        if self.engine is None:
            return
        self._pending.append(use)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        try:
            await asyncio.sleep(self.flush_seconds)
        finally:
            self._writer = None
        await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await self._write(pending)

    async def _write(self, uses: list[Use]) -> None:
        rows = merged(uses)
        if self.engine is None or not rows:
            return
        statement = add_statement(rows)

        async def write(connection: Any) -> None:
            await connection.execute(statement)

        try:
            await in_transaction(self.engine, write)
        except Exception as exc:  # never the use's failure: logged, counted, short
            WRITES_FAILED.inc(len(rows))
            logger.warning("usage not recorded", extra={"counters": len(rows), "error": repr(exc)})

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.flush()


_COPIES: Table = UsageCounterCopy.__table__  # type: ignore[assignment]
_KEY = (
    _COUNTERS.c.updated_at,
    _COUNTERS.c.tenant_id,
    _COUNTERS.c.hour,
    _COUNTERS.c.meter,
    _COUNTERS.c.subject,
)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def ship(main: AsyncEngine, bind: Bind) -> int:
    """Copy the counters changed since the bind's newest copy (less SHIP_OVERLAP) to `bind`,
    in batches of SHIP_BATCH: absolute figures, so a counter copied twice is the same copy and
    a failed pass is simply done again. The number of rows copied."""
    async with bind.engine.connect() as connection:
        newest = await connection.scalar(select(func.max(_COPIES.c.updated_at)))
    since = _utc(newest) - SHIP_OVERLAP if newest is not None else None
    after: tuple[Any, ...] | None = None
    copied = 0
    while True:
        statement = select(*_KEY, _COUNTERS.c.quantity).order_by(*_KEY).limit(SHIP_BATCH)
        if since is not None:
            statement = statement.where(_COUNTERS.c.updated_at >= since)
        if after is not None:
            statement = statement.where(tuple_(*_KEY) > tuple_(*after))
        async with main.connect() as connection:
            rows = (await connection.execute(statement)).all()
        if not rows:
            return copied
        await _copy(bind, [row._asdict() for row in rows])
        copied += len(rows)
        after = tuple(rows[-1])[: len(_KEY)]


async def _copy(bind: Bind, rows: list[dict[str, Any]]) -> None:
    if bind.dialect == "mysql":  # DATETIME holds no zone: UTC, as written
        naive = [
            {
                **row,
                "hour": _utc(row["hour"]).replace(tzinfo=None),
                "updated_at": _utc(row["updated_at"]).replace(tzinfo=None),
            }
            for row in rows
        ]
        upsert = mysql.insert(_COPIES).values(naive)
        statement: Any = upsert.on_duplicate_key_update(
            quantity=upsert.inserted.quantity, updated_at=upsert.inserted.updated_at
        )
    else:
        pg_upsert = insert(_COPIES).values(rows)
        statement = pg_upsert.on_conflict_do_update(
            index_elements=["tenant_id", "hour", "meter", "subject"],
            set_={
                "quantity": pg_upsert.excluded.quantity,
                "updated_at": pg_upsert.excluded.updated_at,
            },
        )
    async with bind.engine.begin() as connection:
        await connection.execute(statement)


@dataclass(frozen=True)
class Spender:
    """What one tenant used in a period, in the figures a platform watches."""

    tenant_id: uuid.UUID | None  # None: every tenant past the top ones, together
    llm_tokens: int
    runs: int
    run_seconds: int
    searches: int


_LLM = (Meter.LLM_PROMPT_TOKENS, Meter.LLM_COMPLETION_TOKENS, Meter.EMBEDDING_TOKENS)


def _spend_columns() -> tuple[Any, ...]:
    quantity, meter = _COUNTERS.c.quantity, _COUNTERS.c.meter
    return (
        func.coalesce(func.sum(quantity).filter(meter.in_(_LLM)), 0).label("llm_tokens"),
        func.coalesce(func.sum(quantity).filter(meter == Meter.RUNS_ACCEPTED), 0).label("runs"),
        func.coalesce(func.sum(quantity).filter(meter == Meter.RUN_MILLISECONDS), 0).label("ms"),
        func.coalesce(func.sum(quantity).filter(meter == Meter.SEARCH_QUERIES), 0).label("q"),
    )


async def top_spenders(
    connection: AsyncConnection, start: datetime, end: datetime, limit: int
) -> tuple[list[Spender], Spender]:
    """The `limit` tenants that spent the most LLM tokens in [start, end) (then runs), and
    all the others together: a bounded view of a platform's spend (metrics, the superuser's
    report)."""
    within = (_COUNTERS.c.hour >= start) & (_COUNTERS.c.hour < end)
    by_tenant = (
        select(_COUNTERS.c.tenant_id, *_spend_columns())
        .where(within)
        .group_by(_COUNTERS.c.tenant_id)
        .subquery("by_tenant")
    )
    ranked = (
        select(by_tenant)
        .order_by(by_tenant.c.llm_tokens.desc(), by_tenant.c.runs.desc(), by_tenant.c.tenant_id)
        .limit(limit)
    )
    top = [
        Spender(row.tenant_id, int(row.llm_tokens), int(row.runs), int(row.ms) // 1000, int(row.q))
        for row in await connection.execute(ranked)
    ]
    everyone = (await connection.execute(select(*_spend_columns()).where(within))).one()
    rest = Spender(
        None,
        int(everyone.llm_tokens) - sum(s.llm_tokens for s in top),
        int(everyone.runs) - sum(s.runs for s in top),
        int(everyone.ms) // 1000 - sum(s.run_seconds for s in top),
        int(everyone.q) - sum(s.searches for s in top),
    )
    return top, rest
