"""A worker's ledger writes in groups, on the real database: runs claimed and finished at the
same moment share one UPDATE each, with exactly the rules of a claim or a finish alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.db.models import RunState, TaskRun
from switchyard.platform.runs import ledger
from tests.fixtures.tasks import insert_run


@pytest.fixture
async def writes(engine: AsyncEngine) -> AsyncIterator[ledger.GroupWrites]:
    group = ledger.GroupWrites(engine, window_seconds=0.05, most=1000)
    yield group
    await group.close()


async def stored(engine: AsyncEngine, run_id: uuid.UUID) -> TaskRun:
    async with async_sessionmaker(engine)() as session:
        run = await session.scalar(select(TaskRun).where(TaskRun.id == run_id))
    assert run is not None
    return run


async def test_claims_at_one_moment_share_one_update_and_keep_every_rule(
    engine: AsyncEngine, tenant_id: uuid.UUID, writes: ledger.GroupWrites, updates: list[str]
) -> None:
    other = uuid.uuid4()
    ready = [(await insert_run(engine, tenant_id)).id for _ in range(20)]
    waiting = (await insert_run(engine, tenant_id, admitted_at=None)).id
    done = (await insert_run(engine, tenant_id, state=RunState.SUCCEEDED)).id
    running = (await insert_run(engine, tenant_id, state=RunState.STARTED, attempts=1)).id
    foreign = (await insert_run(engine, tenant_id)).id
    asked = [(run_id, tenant_id) for run_id in [*ready, waiting, done, running]]
    asked += [(foreign, other), (ready[0], tenant_id)]  # another tenant's message; a duplicate

    answers = await asyncio.gather(*(writes.claim(run_id, tenant) for run_id, tenant in asked))

    assert len(updates) == 1  # one statement for all of them
    claimed = answers[:20]
    assert all(change is not None for change in claimed)
    assert [change.id for change in claimed if change] == ready
    assert {(change.state, change.attempts) for change in claimed if change} == {
        (RunState.STARTED, 1)
    }
    assert answers[20:] == [None] * 5  # unadmitted, final, running, foreign, twice
    assert (await stored(engine, waiting)).state is RunState.QUEUED
    assert (await stored(engine, running)).attempts == 1
    foreign_run = await stored(engine, foreign)
    assert (foreign_run.state, foreign_run.attempts) == (RunState.QUEUED, 0)
    assert (await stored(engine, ready[0])).attempts == 1  # started once, not twice


async def test_outcomes_at_one_moment_share_one_update_and_keep_every_rule(
    engine: AsyncEngine, tenant_id: uuid.UUID, writes: ledger.GroupWrites, updates: list[str]
) -> None:
    started = [
        (await insert_run(engine, tenant_id, state=RunState.STARTED, attempts=1)).id
        for _ in range(4)
    ]
    cancelled = (await insert_run(engine, tenant_id, state=RunState.CANCELLED)).id
    outcomes = [
        ledger.Finish(started[0], RunState.SUCCEEDED, result={"answer": 42}),
        ledger.Finish(started[1], RunState.RETRYING, error=TimeoutError("slow")),
        ledger.Finish(started[2], RunState.FAILED, error=ValueError("x" * 5000)),
        ledger.Finish(started[3], RunState.SUCCEEDED),  # a handler that returned None
        ledger.Finish(cancelled, RunState.SUCCEEDED, result={"late": True}),
    ]

    answers = await asyncio.gather(*(writes.finish(outcome) for outcome in outcomes))

    assert len(updates) == 1
    assert [answer.state if answer else None for answer in answers] == [
        RunState.SUCCEEDED,
        RunState.RETRYING,
        RunState.FAILED,
        RunState.SUCCEEDED,
        None,  # cancelled meanwhile: its outcome is not recorded
    ]
    succeeded = await stored(engine, started[0])
    assert succeeded.result == {"answer": 42}
    assert succeeded.finished_at is not None
    retrying = await stored(engine, started[1])
    assert (retrying.error_type, retrying.error_message) == ("TimeoutError", "slow")
    assert retrying.finished_at is None  # not final
    failed = await stored(engine, started[2])
    assert failed.error_type == "ValueError"
    assert failed.error_message == "x" * ledger.MAX_ERROR_MESSAGE
    assert failed.finished_at is not None
    assert (await stored(engine, started[3])).result is None  # SQL NULL, not JSON null
    kept = await stored(engine, cancelled)
    assert (kept.state, kept.result) == (RunState.CANCELLED, None)


async def test_an_outcome_alone_in_its_group_with_nothing_but_nulls_is_recorded(
    engine: AsyncEngine, tenant_id: uuid.UUID, writes: ledger.GroupWrites
) -> None:
    """A VALUES list whose result and error columns are all NULL (a retry's first outcome,
    a handler that returned None) still types them as the ledger's."""
    run_id = (await insert_run(engine, tenant_id, state=RunState.STARTED, attempts=1)).id
    changed = await writes.finish(ledger.Finish(run_id, RunState.SUCCEEDED))
    assert changed is not None
    run = await stored(engine, run_id)
    assert (run.state, run.result, run.error_type) == (RunState.SUCCEEDED, None, None)


async def test_a_success_after_a_retry_keeps_the_last_error_as_a_finish_alone_does(
    engine: AsyncEngine, tenant_id: uuid.UUID, writes: ledger.GroupWrites
) -> None:
    grouped = (await insert_run(engine, tenant_id, state=RunState.STARTED, attempts=1)).id
    alone = (await insert_run(engine, tenant_id, state=RunState.STARTED, attempts=1)).id
    for run_id in (grouped, alone):
        async with engine.begin() as connection:
            retrying = ledger.Finish(run_id, RunState.RETRYING, error=OSError("flaky"))
            await ledger.finish_group(connection, [retrying])
            await connection.execute(
                update(TaskRun)
                .where(TaskRun.id == run_id)
                .values(state=RunState.STARTED, attempts=2)
            )
    await writes.finish(ledger.Finish(grouped, RunState.SUCCEEDED, result=[1, 2]))
    async with engine.begin() as connection:
        await ledger.finish_group(
            connection, [ledger.Finish(alone, RunState.SUCCEEDED, result=[1, 2])]
        )
    one, other = await stored(engine, grouped), await stored(engine, alone)
    assert (one.state, one.result, one.error_type, one.error_message) == (
        other.state,
        other.result,
        other.error_type,
        other.error_message,
    )
    assert one.error_type == "OSError"
