"""The ledger's own writes never deadlock each other into a lost run, on the real database.

The collision found under volume: a gateway marks a bulk request's runs published in one
UPDATE while a worker claims and finishes the same runs in groups. Each statement locks many
rows; when two lock them in different orders, PostgreSQL kills one (40P01). Every multi-row
write now locks its rows in id order, and a deadlock or serialization failure that happens
all the same is retried: every run below ends `succeeded`, whatever order its outcomes
arrive in, and no mark is given up."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.models import RunState, TaskRun
from switchyard.platform.runs import ledger

RUNS = 2000
ROUNDS = 6


async def store_runs(engine: AsyncEngine, tenant_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    now = datetime.now(UTC)
    rows = [
        {
            "id": run_id,
            "tenant_id": tenant_id,
            "task": "system.echo",
            "queue": "default",
            "payload": {},
            "state": RunState.QUEUED,
            "attempts": 0,
            "admitted_at": now,
        }
        for run_id in ids
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(TaskRun), rows)
    return ids


async def states(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[RunState, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(TaskRun.state, TaskRun.published_at.is_not(None)).where(TaskRun.id.in_(ids))
        )
        found: dict[RunState, int] = {}
        for state, published in rows:
            assert published, "every run's publish mark was written"
            found[state] = found.get(state, 0) + 1
        return found


async def test_marks_claims_and_outcomes_of_the_same_runs_at_once_lose_nothing(
    engine: AsyncEngine, tenant_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    """A bulk's publish marks race a worker's grouped claims and outcomes over the same rows,
    the outcomes arriving in reverse and shuffled order: on the old statements one of them
    died with `deadlock detected` in most rounds."""
    caplog.set_level(logging.WARNING, logger="switchyard")
    writes = ledger.GroupWrites(engine, window_seconds=0.002, most=RUNS)
    done: list[uuid.UUID] = []
    try:
        for round_ in range(ROUNDS):
            ids = await store_runs(engine, tenant_id, RUNS)
            claimed = await asyncio.gather(*(writes.claim(run_id, tenant_id) for run_id in ids))
            assert all(change is not None for change in claimed)
            order = sorted(ids, reverse=True) if round_ % 2 else random.sample(ids, len(ids))
            marks = ledger.PublishedMarks(engine, delay=0, batch=RUNS)
            for run_id in sorted(ids):
                marks.add(run_id)
            outcomes = [
                writes.finish(ledger.Finish(run_id, RunState.SUCCEEDED, result=round_))
                for run_id in order
            ]
            finished = await asyncio.gather(marks.close(), *outcomes)
            assert all(change is not None for change in finished[1:])
            done += ids
    finally:
        await writes.close()
    assert await states(engine, done) == {RunState.SUCCEEDED: RUNS * ROUNDS}
    assert not [r for r in caplog.records if "not recorded" in r.getMessage()]


async def test_a_deadlock_of_a_grouped_write_is_retried_not_raised(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    """Two groups finishing the same runs in opposite orders at once: PostgreSQL picks a
    victim if both lock as they go, and the retry (or the id order) settles both."""
    ids = await store_runs(engine, tenant_id, RUNS)
    async with engine.begin() as connection:
        await ledger.claim_group(
            connection, [(run_id, tenant_id) for run_id in ids], redelivered=False
        )
    one = ledger.GroupWrites(engine, window_seconds=0.002, most=RUNS)
    other = ledger.GroupWrites(engine, window_seconds=0.002, most=RUNS)
    try:
        answers = await asyncio.gather(
            *(one.finish(ledger.Finish(run_id, RunState.SUCCEEDED)) for run_id in sorted(ids)),
            *(
                other.finish(ledger.Finish(run_id, RunState.FAILED))
                for run_id in sorted(ids, reverse=True)
            ),
        )
    finally:
        await one.close()
        await other.close()
    # Each run is finished by exactly one of the two groups: the other finds it final.
    for index in range(RUNS):
        assert (answers[index] is None) != (answers[RUNS + RUNS - 1 - index] is None)
    found = await states_unpublished(engine, ids)
    assert sum(found.values()) == RUNS
    assert set(found) <= {RunState.SUCCEEDED, RunState.FAILED}


async def states_unpublished(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[RunState, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(TaskRun.state).where(TaskRun.id.in_(ids)))
        found: dict[RunState, int] = {}
        for (state,) in rows:
            found[state] = found.get(state, 0) + 1
        return found
