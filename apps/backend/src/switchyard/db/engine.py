"""PostgreSQL (and the other SQL binds): the async engine, its session factory and its probe."""

from __future__ import annotations

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

from switchyard.settings import Settings

T = TypeVar("T")


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
    return ping_when_idle(engine, settings.database_ping_after_idle_seconds)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def once_more_if_dropped(
    engine: AsyncEngine, operation: Callable[[AsyncConnection, bool], Awaitable[T]]
) -> T:
    """Run `operation(connection, retried)` on an autocommit connection; if the connection
    turns out to be dead (the server restarted or dropped it while it sat in the pool, within
    the idle-ping window), SQLAlchemy invalidates the pool and the operation runs once more on
    a new connection, with `retried` True. Only for operations that are safe to repeat, or
    that adapt to it through `retried`: the first attempt may have reached the server."""
    try:
        async with autocommit(engine) as connection:
            return await operation(connection, False)
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    async with autocommit(engine) as connection:
        return await operation(connection, True)


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
