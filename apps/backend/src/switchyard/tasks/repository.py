"""Queries of the tasks domain: definitions, runs, dead letters — each within one tenant."""

from __future__ import annotations

import uuid
from datetime import datetime

from switchyard.db.models import DeadLetter, RunState, TaskDefinition, TaskRun
from switchyard.db.repository import TenantRepository
from switchyard.errors import NotFoundError


class DefinitionRepository(TenantRepository[TaskDefinition]):
    model = TaskDefinition
    not_found = "No task definition {id}."

    async def by_name(self, name: str) -> TaskDefinition | None:
        return await self.first(TaskDefinition.name == name)

    async def by_name_or_404(self, name: str) -> TaskDefinition:
        definition = await self.by_name(name)
        if definition is None:
            raise NotFoundError(f"No task definition named {name!r}.")
        return definition

    async def by_names(self, names: set[str]) -> dict[str, TaskDefinition]:
        if not names:
            return {}
        found = await self.all(self.select(TaskDefinition.name.in_(names)))
        return {definition.name: definition for definition in found}

    async def listed(self) -> list[TaskDefinition]:
        return await self.all(self.select().order_by(TaskDefinition.name))


class RunRepository(TenantRepository[TaskRun]):
    model = TaskRun
    not_found = "No run {id}."

    async def by_idempotency_key(self, key: str) -> TaskRun | None:
        return await self.first(TaskRun.idempotency_key == key)

    async def by_idempotency_keys(self, keys: list[str]) -> dict[str, TaskRun]:
        if not keys:
            return {}
        runs = await self.all(self.select(TaskRun.idempotency_key.in_(keys)))
        return {run.idempotency_key: run for run in runs if run.idempotency_key is not None}

    async def page_of(
        self,
        *,
        state: RunState | None,
        task: str | None,
        cursor: str | None,
        limit: int,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[TaskRun], str | None]:
        """Newest first, filtered by state, task and submission time (`since` inclusive,
        `until` exclusive)."""
        statement = self.select()
        if state is not None:
            statement = statement.where(TaskRun.state == state)
        if task is not None:
            statement = statement.where(TaskRun.task == task)
        if since is not None:
            statement = statement.where(TaskRun.created_at >= since)
        if until is not None:
            statement = statement.where(TaskRun.created_at < until)
        return await self.page(statement, cursor, limit)


class DeadLetterRepository(TenantRepository[DeadLetter]):
    model = DeadLetter
    not_found = "No dead letter {id}."

    async def newest(self, limit: int, run_id: uuid.UUID | None = None) -> list[DeadLetter]:
        statement = self.select() if run_id is None else self.select(DeadLetter.run_id == run_id)
        return await self.all(statement.order_by(DeadLetter.created_at.desc()).limit(limit))
