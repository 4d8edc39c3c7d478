"""Queries of the tasks domain: definitions, runs listing, dead letters."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db import pagination
from switchyard.db.models import DeadLetter, RunState, TaskDefinition, TaskRun
from switchyard.db.tenancy import scoped


async def definition_by_name(
    session: AsyncSession, tenant_id: uuid.UUID, name: str
) -> TaskDefinition | None:
    return await session.scalar(scoped(TaskDefinition, tenant_id, TaskDefinition.name == name))


async def definitions(session: AsyncSession, tenant_id: uuid.UUID) -> list[TaskDefinition]:
    statement = scoped(TaskDefinition, tenant_id).order_by(TaskDefinition.name)
    return list((await session.scalars(statement)).all())


async def run(session: AsyncSession, tenant_id: uuid.UUID, run_id: uuid.UUID) -> TaskRun | None:
    return await session.scalar(scoped(TaskRun, tenant_id, TaskRun.id == run_id))


async def run_by_idempotency_key(
    session: AsyncSession, tenant_id: uuid.UUID, key: str
) -> TaskRun | None:
    return await session.scalar(scoped(TaskRun, tenant_id, TaskRun.idempotency_key == key))


async def runs_page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    state: RunState | None,
    task: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[TaskRun]:
    """Newest first; `limit + 1` rows so the caller knows whether a next page exists."""
    statement = scoped(TaskRun, tenant_id)
    if state is not None:
        statement = statement.where(TaskRun.state == state)
    if task is not None:
        statement = statement.where(TaskRun.task == task)
    statement = pagination.newest_first(statement, TaskRun, after, limit)
    return list((await session.scalars(statement)).all())


async def dead_letters(session: AsyncSession, tenant_id: uuid.UUID, limit: int) -> list[DeadLetter]:
    statement = scoped(DeadLetter, tenant_id).order_by(DeadLetter.created_at.desc()).limit(limit)
    return list((await session.scalars(statement)).all())


async def dead_letter(
    session: AsyncSession, tenant_id: uuid.UUID, letter_id: uuid.UUID
) -> DeadLetter | None:
    return await session.scalar(scoped(DeadLetter, tenant_id, DeadLetter.id == letter_id))
