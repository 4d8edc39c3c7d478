"""PostgreSQL (and the other SQL binds): the async engine, its session factory and its probe."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from switchyard import tracing
from switchyard.settings import Settings

T = TypeVar("T")
logger = logging.getLogger(__name__)


def pool_options(settings: Settings) -> dict[str, Any]:
    """Pool size, overflow, wait, pre-ping and recycle: the same for every database engine.

    With DATABASE_PING_AFTER_IDLE_SECONDS = 0 every checkout is pinged (SQLAlchemy's
    pre-ping); otherwise `ping_when_idle` pings only connections idle for longer."""
    return {
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
        "pool_timeout": settings.database_pool_timeout_seconds,
        "pool_pre_ping": settings.database_ping_after_idle_seconds == 0,
        "pool_recycle": 1800,
        # Errors (and so error logs) never carry a statement's values: password hashes,
        # tokens' digests, tenants' payloads.
        "hide_parameters": True,
    }


def ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> AsyncEngine:
    """Check a pooled connection before use only when it sat idle for `idle_seconds` or more.

    SQLAlchemy's pre-ping costs a round trip on every checkout (three with asyncpg outside a
    transaction: BEGIN, the ping, ROLLBACK), which is most of what a short ledger update costs.
    A connection just returned by a busy worker or request is alive; one idle for a while may
    have been cut (a database restart, a proxy's idle timeout), so that one is pinged, and
    replaced when the ping fails. A connection cut within the window still fails its first
    statement; SQLAlchemy then invalidates the pool, so the next checkout reconnects."""
    if idle_seconds <= 0:
        return engine
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["switchyard_returned_at"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("switchyard_returned_at")
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # a new connection, or one in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out (or opens) another.
            raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error

    return engine


def create_engine(
    settings: Settings, url: URL, application_name: str, *, keep_overflow: bool = False
) -> AsyncEngine:
    """An engine with the pool, pre-ping and timeouts taken from settings.

    `keep_overflow` (a worker process, whose hundreds of runs in flight keep the pool busy):
    connections opened beyond DATABASE_POOL_SIZE stay open too, up to the same bound of size
    plus overflow, instead of being closed at each return and opened again a moment later."""
    options = pool_options(settings)
    if keep_overflow:
        options["pool_size"] += options["max_overflow"]
        options["max_overflow"] = 0
    engine = create_async_engine(
        url,
        **options,
        connect_args={
            "timeout": settings.database_connect_timeout_seconds,
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(settings.database_statement_timeout_ms),
            },
        },
    )
    tracing.instrument_engine(engine)
    return ping_when_idle(engine, settings.database_ping_after_idle_seconds)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# PostgreSQL's word that a statement lost a race for locks (a deadlock) or for a consistent
# snapshot (serialization): it was rolled back whole, and the same statement may run again.
CONFLICTS = frozenset({"40P01", "40001"})
CONFLICT_ATTEMPTS = 10
CONFLICT_BACKOFF_SECONDS = 0.005


def lost_a_race(error: BaseException) -> bool:
    """Whether `error` is a deadlock or a serialization failure of the statement that raised."""
    current: BaseException | None = error
    while current is not None:
        if getattr(current, "sqlstate", None) in CONFLICTS:
            return True
        current = current.__cause__
    return False


async def after_conflict(attempt: int) -> None:
    """Wait before repeating a statement that lost a race: a few milliseconds, doubling and
    jittered, so that the two sides of a deadlock do not meet again at once."""
    jitter = random.uniform(0.5, 1.0)  # noqa: S311 - spreads retries, guards nothing
    await asyncio.sleep(jitter * CONFLICT_BACKOFF_SECONDS * 2 ** min(attempt, 6))


async def once_more_if_dropped(
    engine: AsyncEngine, operation: Callable[[AsyncConnection, bool], Awaitable[T]]
) -> T:
    """Run `operation(connection, retried)` on an autocommit connection.

    If the connection turns out to be dead (the server restarted or dropped it while it sat
    in the pool, within the idle-ping window), SQLAlchemy invalidates the pool and the
    operation runs once more on a new connection, with `retried` True: the first attempt may
    have reached the server, so only for operations that are safe to repeat or that adapt to
    it through `retried`. A deadlock or serialization failure (`CONFLICTS`) rolled the
    statement back whole: the operation runs again as it was, up to CONFLICT_ATTEMPTS times."""
    retried = False
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            async with autocommit(engine) as connection:
                return await operation(connection, retried)
        except exc.DBAPIError as error:
            if error.connection_invalidated and not retried:
                retried = True
                continue
            if not lost_a_race(error) or attempt == CONFLICT_ATTEMPTS - 1:
                raise
        logger.info("statement lost a race for locks; repeating it", extra={"attempt": attempt + 1})
        await after_conflict(attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def in_transaction(
    engine: AsyncEngine,
    operation: Callable[[AsyncConnection], Awaitable[T]],
    *,
    retry_dropped: bool = False,
) -> T:
    """Run `operation` in a transaction of its own, begun again from the start when it loses
    a race for locks or a snapshot (`CONFLICTS`): for transactions that are safe to repeat
    whole (they change nothing outside the database before they commit). With
    `retry_dropped`, also once more on a new connection when the first was dead (the
    transaction may have committed: only for one that is safe to repeat after it did)."""
    dropped = False
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            async with engine.begin() as connection:
                return await operation(connection)
        except exc.DBAPIError as error:
            if retry_dropped and error.connection_invalidated and not dropped:
                dropped = True
                continue
            if not lost_a_race(error) or attempt == CONFLICT_ATTEMPTS - 1:
                raise
        logger.info(
            "transaction lost a race for locks; repeating it", extra={"attempt": attempt + 1}
        )
        await after_conflict(attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose every statement commits by itself: no BEGIN and COMMIT round trips.

    For single-statement changes that need no transaction around them (the run ledger's
    conditional updates); anything that must change several rows together uses a
    transaction (`sessions.begin()`)."""
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


async def probe(engine: AsyncEngine) -> None:
    """Raise unless the database answers a trivial query."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
