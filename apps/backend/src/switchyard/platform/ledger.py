"""The run ledger: every state change of a `task_runs` row goes through here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import FINAL_STATES, RunState, TaskRun

CLAIMABLE = (RunState.QUEUED, RunState.SCHEDULED, RunState.RETRYING)
MAX_ERROR_MESSAGE = 2000


async def claim(session: AsyncSession, run_id: uuid.UUID, *, redelivered: bool) -> TaskRun | None:
    """Move a run to `started` and count the attempt, unless it is final or already running.

    A redelivered message may take over a `started` run: its worker died mid-task."""
    claimable: ColumnElement[bool] = TaskRun.state.in_(CLAIMABLE)
    if redelivered:
        claimable = or_(claimable, TaskRun.state == RunState.STARTED)
    statement = (
        update(TaskRun)
        .where(TaskRun.id == run_id, claimable)
        .values(
            state=RunState.STARTED,
            attempts=TaskRun.attempts + 1,
            started_at=func.coalesce(TaskRun.started_at, func.now()),
        )
        .returning(TaskRun)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def finish(
    session: AsyncSession,
    run_id: uuid.UUID,
    state: RunState,
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> bool:
    """Record the outcome of an attempt, unless the run was cancelled meanwhile."""
    values: dict[str, Any] = {"state": state}
    if state.final:
        values["finished_at"] = func.now()
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error_type"] = type(error).__name__
        values["error_message"] = str(error)[:MAX_ERROR_MESSAGE]
    statement = (
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.state == RunState.STARTED)
        .values(**values)
    )
    result = cast("CursorResult[Any]", await session.execute(statement))
    return int(result.rowcount) > 0


async def mark_dead_lettered(session: AsyncSession, run_id: uuid.UUID) -> TaskRun | None:
    """The broker gave up on a run the worker never concluded (a crash loop, say).

    A run that ended `failed` keeps that state: its dead letter is archived all the same."""
    statement = (
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.state.not_in(FINAL_STATES))
        .values(
            state=RunState.DEAD_LETTERED, finished_at=func.coalesce(TaskRun.finished_at, func.now())
        )
        .returning(TaskRun)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def cancel(session: AsyncSession, run_id: uuid.UUID) -> TaskRun | None:
    """Cancel a run that is not final; None when it was final already."""
    statement = (
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.state.not_in(FINAL_STATES))
        .values(state=RunState.CANCELLED, finished_at=func.now())
        .returning(TaskRun)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def mark_published(session: AsyncSession, run_ids: list[uuid.UUID]) -> None:
    await session.execute(
        update(TaskRun).where(TaskRun.id.in_(run_ids)).values(published_at=func.now())
    )


async def unpublished(
    session: AsyncSession, older_than: datetime, limit: int = 100
) -> list[TaskRun]:
    """Accepted runs whose publish never completed (the gateway died in between), locked."""
    statement = (
        select(TaskRun)
        .where(
            and_(
                TaskRun.published_at.is_(None),
                TaskRun.created_at < older_than,
                TaskRun.state.in_((RunState.QUEUED, RunState.SCHEDULED)),
            )
        )
        .order_by(TaskRun.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(statement)).all())
