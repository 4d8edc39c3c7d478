"""`published_at` is written in batches after the publish: every mark lands, runs published
together share one UPDATE, stopping writes what is pending, and a mark that cannot be written
leaves the run to the outbox instead of failing anything."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from switchyard.db.models import TaskRun
from switchyard.platform.runs import ledger
from tests.fixtures.tasks import insert_run


@pytest.fixture
async def run_ids(engine: AsyncEngine, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    return [(await insert_run(engine, tenant_id)).id for _ in range(5)]


async def marked(engine: AsyncEngine, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime | None]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(TaskRun.id, TaskRun.published_at).where(TaskRun.id.in_(run_ids))
        )
        return {row.id: row.published_at for row in rows}


async def test_runs_published_together_are_marked_with_one_update(
    engine: AsyncEngine, run_ids: list[uuid.UUID], updates: list[str]
) -> None:
    marks = ledger.PublishedMarks(engine, delay=0.05)
    for run_id in run_ids:
        marks.add(run_id)
    assert set((await marked(engine, run_ids)).values()) == {None}  # not before the delay
    writer = marks._writer
    assert writer is not None
    await writer  # the delay runs out by itself
    stamps = await marked(engine, run_ids)
    assert len(stamps) == len(run_ids)
    assert None not in stamps.values()
    assert len(set(stamps.values())) == 1  # one statement: one now()
    assert len(updates) == 1


async def test_a_batch_is_bounded_and_stopping_writes_what_is_pending(
    engine: AsyncEngine, run_ids: list[uuid.UUID], updates: list[str]
) -> None:
    marks = ledger.PublishedMarks(engine, delay=3600, batch=2)
    for run_id in run_ids:
        marks.add(run_id)
    await marks.close()  # does not wait out the hour
    assert None not in (await marked(engine, run_ids)).values()
    assert len(updates) == 3  # 2 + 2 + 1


async def test_a_mark_that_cannot_be_written_leaves_the_run_to_the_outbox(
    engine: AsyncEngine,
    run_ids: list[uuid.UUID],
    database_url: URL,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = create_async_engine(database_url.set(host="127.0.0.1", port=9))  # refused
    try:
        marks = ledger.PublishedMarks(nowhere, delay=0)
        marks.add(run_ids[0])
        with caplog.at_level(logging.WARNING, logger="switchyard.platform.runs.ledger"):
            await marks.close()  # logged, not raised: the run was published all the same
    finally:
        await nowhere.dispose()
    assert "published_at not recorded" in caplog.text
    assert (await marked(engine, [run_ids[0]]))[run_ids[0]] is None
    async with async_sessionmaker(engine)() as session:
        stale = await ledger.unpublished(
            session, datetime.now(UTC) + timedelta(seconds=1), limit=100_000
        )
    assert run_ids[0] in {run.id for run in stale}  # beat's outbox sends it again
