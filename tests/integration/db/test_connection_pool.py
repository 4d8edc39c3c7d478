"""The pool pings a connection only after it sat idle, replaces one that died meanwhile, and
autocommit connections commit each statement without a transaction around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.db import engine as postgres
from switchyard.settings import Settings

IDLE = 0.3


@pytest.fixture
async def idle_pinged(database_url: URL) -> AsyncIterator[tuple[AsyncEngine, list[Any]]]:
    """An engine pinging connections idle for IDLE seconds, with every ping recorded."""
    settings = Settings(
        database_url=database_url.render_as_string(hide_password=False),
        database_ping_after_idle_seconds=IDLE,
        database_pool_size=1,
        database_max_overflow=0,
    )
    engine = postgres.create_engine(settings, database_url, "pool-test")
    dialect = engine.sync_engine.dialect
    pings: list[Any] = []
    ping = dialect.do_ping

    def recording_ping(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    dialect.do_ping = recording_ping  # type: ignore[method-assign]
    yield engine, pings
    await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_used_a_moment_ago_is_not_pinged(
    idle_pinged: tuple[AsyncEngine, list[Any]],
) -> None:
    engine, pings = idle_pinged
    first = await backend_pid(engine)  # a new connection: no ping either
    second = await backend_pid(engine)
    assert second == first
    assert pings == []


async def test_an_idle_connection_is_pinged_and_replaced_when_it_died(
    idle_pinged: tuple[AsyncEngine, list[Any]], engine: AsyncEngine
) -> None:
    pinged_engine, pings = idle_pinged
    first = await backend_pid(pinged_engine)
    await asyncio.sleep(IDLE + 0.1)
    assert await backend_pid(pinged_engine) == first  # alive: pinged, kept
    assert len(pings) == 1

    async with engine.connect() as admin:  # the server drops it while it sits in the pool
        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    await asyncio.sleep(IDLE + 0.1)
    replaced = await backend_pid(pinged_engine)  # no error reaches the caller
    assert replaced != first
    assert len(pings) == 2


async def test_without_an_idle_window_every_checkout_is_pre_pinged(database_url: URL) -> None:
    settings = Settings(database_ping_after_idle_seconds=0)
    assert postgres.pool_options(settings)["pool_pre_ping"] is True
    assert postgres.pool_options(Settings())["pool_pre_ping"] is False


async def test_autocommit_statements_are_visible_at_once_without_a_transaction(
    database_url: URL, engine: AsyncEngine
) -> None:
    async with engine.begin() as setup:
        await setup.execute(text("CREATE TABLE IF NOT EXISTS pool_probe (value int)"))
    try:
        async with postgres.autocommit(engine) as connection:
            await connection.execute(text("INSERT INTO pool_probe VALUES (7)"))
            async with engine.connect() as other:  # a second session sees it already
                seen = await other.execute(text("SELECT count(*) FROM pool_probe WHERE value = 7"))
                assert seen.scalar_one() == 1
            # Each statement is its own transaction: two in a row get two transaction ids.
            first = (await connection.execute(text("SELECT txid_current()"))).scalar_one()
            second = (await connection.execute(text("SELECT txid_current()"))).scalar_one()
            assert second > first
        async with engine.connect() as connection:  # isolation is reset on return to the pool
            assert await connection.get_isolation_level() == "READ COMMITTED"
    finally:
        async with engine.begin() as cleanup:
            await cleanup.execute(text("DROP TABLE pool_probe"))


async def test_an_operation_is_repeated_once_when_its_connection_was_dropped(
    idle_pinged: tuple[AsyncEngine, list[Any]], engine: AsyncEngine
) -> None:
    pinged_engine, pings = idle_pinged
    first = await backend_pid(pinged_engine)
    async with engine.connect() as admin:  # dropped a moment after its last use: no ping
        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    calls: list[bool] = []

    async def read_pid(connection: AsyncConnection, retried: bool) -> int:
        calls.append(retried)
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    replaced = await postgres.once_more_if_dropped(pinged_engine, read_pid)
    assert replaced != first
    assert calls == [False, True]
    assert pings == []


async def test_an_error_that_is_not_a_dropped_connection_is_not_repeated(
    engine: AsyncEngine,
) -> None:
    calls: list[bool] = []

    async def broken(connection: AsyncConnection, retried: bool) -> None:
        calls.append(retried)
        await connection.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(DBAPIError):
        await postgres.once_more_if_dropped(engine, broken)
    assert calls == [False]
