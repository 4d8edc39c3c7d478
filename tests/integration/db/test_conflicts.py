"""A deadlock or serialization failure of the platform's own writes is repeated, not raised:
two transactions made to lock two runs in opposite orders on the real database."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.db.engine import (
    CONFLICT_ATTEMPTS,
    in_transaction,
    lost_a_race,
    once_more_if_dropped,
)
from switchyard.db.models import TaskRun
from tests.fixtures.tasks import insert_run

LOCK = text("SELECT id FROM task_runs WHERE id = :id FOR UPDATE")


async def test_a_transaction_that_a_deadlock_rolled_back_runs_again_and_commits(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    first, second = (
        (await insert_run(engine, tenant_id)).id,
        (await insert_run(engine, tenant_id)).id,
    )
    attempts: list[int] = []
    holds_second = asyncio.Event()
    waits = asyncio.Event()

    async def ours(connection: AsyncConnection) -> int:
        attempts.append(len(attempts) + 1)
        # The first attempt waits first, so PostgreSQL's check finds the cycle there first.
        await connection.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        await connection.execute(LOCK, {"id": first})
        if len(attempts) == 1:
            await holds_second.wait()
            waits.set()
        await connection.execute(LOCK, {"id": second})
        await connection.execute(
            update(TaskRun).where(TaskRun.id == first).values(request_id="ours")
        )
        return len(attempts)

    async def theirs() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("SET LOCAL deadlock_timeout = '5s'"))
            await connection.execute(LOCK, {"id": second})
            holds_second.set()
            await waits.wait()
            await asyncio.sleep(0.02)  # ours is waiting for `second` by now
            await connection.execute(LOCK, {"id": first})

    answer, _ = await asyncio.gather(in_transaction(engine, ours), theirs())

    assert answer == 2  # rolled back once by the deadlock, committed the second time
    async with engine.connect() as connection:
        stored = await connection.scalar(select(TaskRun.request_id).where(TaskRun.id == first))
    assert stored == "ours"


async def test_a_statement_that_keeps_losing_gives_up_after_its_attempts(
    engine: AsyncEngine,
) -> None:
    calls: list[bool] = []

    async def always_loses(connection: AsyncConnection, retried: bool) -> None:
        calls.append(retried)
        await connection.execute(
            text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure'; END $$")
        )

    with pytest.raises(DBAPIError) as raised:
        await once_more_if_dropped(engine, always_loses)
    assert lost_a_race(raised.value)
    # Repeated as it was (not as a statement that may have reached the server: retried False).
    assert calls == [False] * CONFLICT_ATTEMPTS


async def test_other_errors_are_not_repeated(engine: AsyncEngine) -> None:
    calls: list[bool] = []

    async def broken(connection: AsyncConnection, retried: bool) -> None:
        calls.append(retried)
        await connection.execute(text("SELECT no_such_column FROM task_runs"))

    with pytest.raises(DBAPIError) as raised:
        await once_more_if_dropped(engine, broken)
    assert not lost_a_race(raised.value)
    assert calls == [False]
