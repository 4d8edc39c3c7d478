"""Workflow definitions: registered, versioned, listed, deleted. A run of a workflow starts
from one version and keeps it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import TaskRun, WorkflowDefinition, WorkflowRun, WorkflowStep
from switchyard.db.pagination import cut, newest_first, parse_cursor
from switchyard.errors import ConflictError, InvalidInputError, NotFoundError
from switchyard.platform import audit
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.workflows import engine, graph
from switchyard.tasks.service import Submitter, check_quotas
from switchyard.workflows.schemas import (
    StepIn,
    StepOut,
    StepRunOut,
    WorkflowIn,
    WorkflowRunIn,
    WorkflowRunOut,
    WorkflowRunsIn,
    WorkflowUpdate,
)


@dataclass(frozen=True)
class Editor:
    """Who registers or changes a workflow: its tenant, the scopes its steps' tasks need, the
    environment payloads are checked in, and the tasks there are."""

    tenant_id: uuid.UUID
    scopes: frozenset[str]
    environment: str
    registry: TaskRegistry
    max_steps: int
    actor: str = audit.ANONYMOUS


def checked_steps(steps: list[StepIn], editor: Editor) -> list[dict[str, Any]]:
    """The steps as stored (defaults filled in), or a 422 naming every failing step field."""
    stored = [step.model_dump(mode="json") for step in steps]
    caller = graph.Caller(editor.registry, editor.scopes, editor.environment)
    errors = graph.check(stored, caller, max_steps=editor.max_steps)
    if errors:
        raise InvalidInputError("The workflow's steps cannot run as given.", errors)
    return stored


def _versions(tenant_id: uuid.UUID, name: str) -> Select[WorkflowDefinition]:
    return select(WorkflowDefinition).where(
        WorkflowDefinition.tenant_id == tenant_id, WorkflowDefinition.name == name
    )


async def latest(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> WorkflowDefinition:
    """The workflow's newest version, or 404."""
    found = await session.scalar(
        _versions(tenant_id, name)
        .where(WorkflowDefinition.deleted_at.is_(None))
        .order_by(WorkflowDefinition.version.desc())
        .limit(1)
    )
    if found is None:
        raise NotFoundError(f"No workflow named {name!r}.")
    return found


async def version(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, number: int
) -> WorkflowDefinition:
    """One version, kept while runs may use it (a deleted workflow's too), or 404."""
    found = await session.scalar(
        _versions(tenant_id, name).where(WorkflowDefinition.version == number)
    )
    if found is None:
        raise NotFoundError(f"Workflow {name!r} has no version {number}.")
    return found


async def _add(
    session: AsyncSession,
    editor: Editor,
    name: str,
    description: str | None,
    steps: list[dict[str, Any]],
    number: int,
) -> WorkflowDefinition:
    definition = WorkflowDefinition(
        tenant_id=editor.tenant_id,
        name=name,
        version=number,
        description=description,
        steps=steps,
        digest=graph.digest(steps),
        created_by=editor.actor,
    )
    session.add(definition)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:  # a concurrent registration took this version number
        raise ConflictError(
            f"Workflow {name!r} changed while this request ran; send it again."
        ) from None
    await session.refresh(definition)
    return definition


async def _next_number(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> int:
    """After every version there was (a deleted workflow's included): a number never means
    two graphs."""
    highest = await session.scalar(
        select(func.max(WorkflowDefinition.version)).where(
            WorkflowDefinition.tenant_id == tenant_id, WorkflowDefinition.name == name
        )
    )
    return int(highest or 0) + 1


# GET /workflows/runs lists runs: no workflow can be named so.
RESERVED_NAMES = frozenset({"runs"})


async def create(session: AsyncSession, body: WorkflowIn, editor: Editor) -> WorkflowDefinition:
    if body.name in RESERVED_NAMES:
        raise InvalidInputError.on(
            "body.name",
            f"{body.name!r} is reserved (GET /workflows/{body.name} lists workflow runs).",
            message="a reserved name",
            type="reserved",
        )
    steps = checked_steps(body.steps, editor)
    try:
        await latest(session, editor.tenant_id, body.name)
    except NotFoundError:
        pass
    else:
        raise ConflictError(
            f"A workflow named {body.name!r} exists; PUT /workflows/{body.name} makes a new "
            "version of it."
        )
    number = await _next_number(session, editor.tenant_id, body.name)
    definition = await _add(session, editor, body.name, body.description, steps, number)
    _audit(session, editor, "workflow.created", definition)
    return definition


async def update_steps(
    session: AsyncSession, name: str, body: WorkflowUpdate, editor: Editor
) -> tuple[WorkflowDefinition, bool]:
    """The version these steps make: (the newest, False) when they are its steps and
    description already, else (a new version, True). Runs started earlier keep theirs."""
    current = await latest(session, editor.tenant_id, name)
    steps = checked_steps(body.steps, editor)
    if graph.digest(steps) == current.digest and body.description == current.description:
        return current, False
    number = await _next_number(session, editor.tenant_id, name)
    definition = await _add(session, editor, name, body.description, steps, number)
    _audit(session, editor, "workflow.versioned", definition)
    return definition, True


async def delete(session: AsyncSession, tenant_id: uuid.UUID, name: str, actor: str) -> None:
    """The workflow is gone from lists and cannot be started; its versions stay for the runs
    that use them (retention removes those with their runs)."""
    current = await latest(session, tenant_id, name)
    await session.execute(
        update(WorkflowDefinition)
        .where(
            WorkflowDefinition.tenant_id == tenant_id,
            WorkflowDefinition.name == name,
            WorkflowDefinition.deleted_at.is_(None),
        )
        .values(deleted_at=datetime.now(UTC))
    )
    audit.record(
        session,
        tenant_id,
        "workflow.deleted",
        actor,
        ("workflow", current.id),
        {"name": name, "version": current.version},
    )


async def page(
    session: AsyncSession, tenant_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[WorkflowDefinition], str | None]:
    """The tenant's workflows (each its newest version), most recently changed first."""
    newest = (
        select(
            WorkflowDefinition.name,
            func.max(WorkflowDefinition.version).label("version"),
        )
        .where(WorkflowDefinition.tenant_id == tenant_id, WorkflowDefinition.deleted_at.is_(None))
        .group_by(WorkflowDefinition.name)
        .subquery("newest")
    )
    statement = (
        select(WorkflowDefinition)
        .join(
            newest,
            (WorkflowDefinition.name == newest.c.name)
            & (WorkflowDefinition.version == newest.c.version),
        )
        .where(WorkflowDefinition.tenant_id == tenant_id)
    )
    rows = await session.scalars(
        newest_first(statement, WorkflowDefinition, parse_cursor(cursor), limit)
    )
    return cut(list(rows), limit)


async def page_runs(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    workflow: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[WorkflowRun, WorkflowDefinition]], str | None]:
    """The tenant's workflow runs, newest first, of one workflow or in one state if asked."""
    statement = select(WorkflowRun).where(WorkflowRun.tenant_id == tenant_id)
    if workflow is not None:
        statement = statement.join(
            WorkflowDefinition, WorkflowDefinition.id == WorkflowRun.definition_id
        ).where(WorkflowDefinition.name == workflow)
    if state is not None:
        statement = statement.where(WorkflowRun.state == state)
    rows = await session.scalars(newest_first(statement, WorkflowRun, parse_cursor(cursor), limit))
    page, next_cursor = cut(list(rows), limit)
    ids = {run.definition_id for run in page}
    definitions = {
        definition.id: definition
        for definition in await session.scalars(
            select(WorkflowDefinition).where(WorkflowDefinition.id.in_(ids))
        )
    }
    return [(run, definitions[run.definition_id]) for run in page], next_cursor


def _audit(
    session: AsyncSession, editor: Editor, action: str, definition: WorkflowDefinition
) -> None:
    audit.record(
        session,
        editor.tenant_id,
        action,
        editor.actor,
        ("workflow", definition.id),
        {"name": definition.name, "version": definition.version, "steps": len(definition.steps)},
    )


RESULT_SUMMARY_BYTES = 4096
RUNS_SHOWN = 20


@dataclass(frozen=True)
class Starter:
    """Who starts a workflow run, with what the platform needs to start its root steps."""

    tenant_id: uuid.UUID
    request_id: str | None
    submitted_by: str
    context: engine.Context
    # The tenant's plan limits: a start is refused (429) when its steps' runs would pass its
    # runs quotas, or run seconds or LLM tokens (for a step that spends them) are spent.
    quotas: Submitter | None = None


async def _by_key(
    session: AsyncSession, tenant_id: uuid.UUID, key: str | None
) -> WorkflowRun | None:
    found = select(WorkflowRun).where(
        WorkflowRun.tenant_id == tenant_id, WorkflowRun.idempotency_key == key
    )
    return await session.scalar(found)


async def _definition_of(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, wanted: int | None
) -> WorkflowDefinition:
    """The version a run is started from: the newest, or `wanted` (not of a deleted one)."""
    if wanted is None:
        return await latest(session, tenant_id, name)
    definition = await version(session, tenant_id, name, wanted)
    if definition.deleted_at is not None:
        raise NotFoundError(f"No workflow named {name!r}.")
    return definition


async def _check_quotas(
    session: AsyncSession, starter: Starter, definition: WorkflowDefinition, runs: int
) -> None:
    """Each step is a run (a mapped one at least one): `runs` starts' worth against the
    tenant's runs quotas."""
    if starter.quotas is None or runs == 0:
        return
    specs = [starter.context.registry.get(step["task"]) for step in definition.steps]
    known = [spec for spec in specs if spec is not None]
    await check_quotas(session, starter.quotas, known * runs)


async def _start(
    session: AsyncSession,
    starter: Starter,
    definition: WorkflowDefinition,
    given: Any,
    idempotency_key: str | None,
) -> tuple[WorkflowRun, engine.Advanced | None]:
    """Store a new run and its root steps' runs (in a savepoint): (the run, what to publish);
    (the run that took the key meanwhile, None) when a concurrent request took it."""
    run = WorkflowRun(
        id=uuid.uuid4(),
        tenant_id=starter.tenant_id,
        definition_id=definition.id,
        input=given,
        idempotency_key=idempotency_key,
        submitted_by=starter.submitted_by,
        request_id=starter.request_id,
    )
    try:
        async with session.begin_nested():
            advanced = await engine.start(
                await session.connection(), starter.context, definition, run
            )
    except IntegrityError:  # a concurrent request took the key
        existing = await _by_key(session, starter.tenant_id, idempotency_key)
        if existing is None:
            raise
        return existing, None
    stored = await session.get(WorkflowRun, run.id, populate_existing=True)
    assert stored is not None
    return stored, advanced


async def start_run(
    session: AsyncSession,
    name: str,
    body: WorkflowRunIn,
    starter: Starter,
    idempotency_key: str | None,
) -> tuple[WorkflowRun, engine.Advanced | None]:
    """A new run of the workflow's version (the newest by default), its root steps' runs
    stored and admitted in the request's unit of work: (the run, what to publish once it has
    committed). With an idempotency key used before: (that run, None)."""
    if idempotency_key is not None:
        existing = await _by_key(session, starter.tenant_id, idempotency_key)
        if existing is not None:
            return existing, None
    definition = await _definition_of(session, starter.tenant_id, name, body.version)
    await _check_quotas(session, starter, definition, 1)
    return await _start(session, starter, definition, body.input, idempotency_key)


async def start_runs(
    session: AsyncSession, name: str, body: WorkflowRunsIn, starter: Starter
) -> tuple[list[tuple[WorkflowRun, bool]], engine.Advanced]:
    """Many runs of one workflow's version in the request's unit of work, each with its input
    and optional idempotency key: [(the run, whether this request started it)], in the
    request's order, and what to publish once it has committed. All or nothing: a key given
    twice is 422; a quota that the new runs would pass refuses them all."""
    seen: dict[str, int] = {}
    for index, item in enumerate(body.runs):
        key = item.idempotency_key
        if key is not None and seen.setdefault(key, index) != index:
            raise InvalidInputError.on(
                f"body.runs.{index}.idempotency_key",
                f"runs {seen[key]} and {index} have the same idempotency key.",
                message="used by an earlier run of this request",
                type="duplicate",
            )
    definition = await _definition_of(session, starter.tenant_id, name, body.version)
    keys = list(seen)
    existing = {
        run.idempotency_key: run
        for run in (
            await session.scalars(
                select(WorkflowRun).where(
                    WorkflowRun.tenant_id == starter.tenant_id,
                    WorkflowRun.idempotency_key.in_(keys),
                )
            )
            if keys
            else []
        )
    }
    new = sum(1 for item in body.runs if item.idempotency_key not in existing)
    await _check_quotas(session, starter, definition, new)
    started: list[tuple[WorkflowRun, bool]] = []
    advanced = engine.Advanced()
    for item in body.runs:
        found = existing.get(item.idempotency_key) if item.idempotency_key else None
        if found is not None:
            started.append((found, False))
            continue
        run, made = await _start(session, starter, definition, item.input, item.idempotency_key)
        if made is not None:
            advanced.add(made)
        started.append((run, made is not None))
    return started, advanced


async def run_view(
    session: AsyncSession, tenant_id: uuid.UUID, run_id: uuid.UUID
) -> WorkflowRunOut:
    """The graph of a workflow run: every step's state, timing, runs and small results."""
    found = (
        await session.execute(
            select(WorkflowRun, WorkflowDefinition)
            .join(WorkflowDefinition, WorkflowDefinition.id == WorkflowRun.definition_id)
            .where(WorkflowRun.id == run_id, WorkflowRun.tenant_id == tenant_id)
        )
    ).one_or_none()
    if found is None:
        raise NotFoundError(f"No workflow run {run_id}.")
    run, definition = found
    steps = {
        step.name: step
        for step in await session.scalars(
            select(WorkflowStep).where(WorkflowStep.workflow_run_id == run.id)
        )
    }
    numbered = (
        select(
            TaskRun.id,
            TaskRun.workflow_step_id,
            TaskRun.state,
            TaskRun.attempts,
            TaskRun.item_index,
            TaskRun.error_message,
            TaskRun.result,
            func.row_number()
            .over(partition_by=TaskRun.workflow_step_id, order_by=TaskRun.item_index)
            .label("n"),
        )
        .where(TaskRun.workflow_step_id.in_([step.id for step in steps.values()]))
        .subquery()
    )
    by_step: dict[uuid.UUID, list[Any]] = {}
    for row in await session.execute(select(numbered).where(numbered.c.n <= RUNS_SHOWN)):
        by_step.setdefault(row.workflow_step_id, []).append(row)
    shown = []
    for spec in definition.steps:
        step = steps[spec["name"]]
        rows = sorted(by_step.get(step.id, []), key=lambda r: (r.item_index is None, r.item_index))
        result = None
        if spec.get("map") is None and rows and rows[0].item_index is None:
            encoded = json.dumps(rows[0].result)
            result = rows[0].result if len(encoded) <= RESULT_SUMMARY_BYTES else None
        shown.append(
            StepOut(
                name=step.name,
                task=spec["task"],
                needs=spec["needs"],
                state=step.state.value,
                items=step.items,
                items_left=step.items_left,
                failed_items=step.failed_items,
                error=step.error_message,
                started_at=step.started_at,
                finished_at=step.finished_at,
                runs=[
                    StepRunOut(
                        id=row.id,
                        state=row.state.value if hasattr(row.state, "value") else row.state,
                        attempts=row.attempts,
                        item_index=row.item_index,
                        error=row.error_message,
                    )
                    for row in rows
                ],
                result=result,
            )
        )
    return WorkflowRunOut(
        id=run.id,
        workflow=definition.name,
        version=definition.version,
        state=run.state.value,
        input=run.input,
        error=run.error_message,
        created_at=run.created_at,
        finished_at=run.finished_at,
        steps=shown,
    )


async def cancel_run(
    session: AsyncSession, tenant_id: uuid.UUID, run_id: uuid.UUID, actor: str
) -> list[Any]:
    """Cancel a running workflow run (404 unknown, 409 ended); the runs it cancelled, for the
    after-change hook once committed."""
    try:
        cancelled = await engine.cancel(await session.connection(), tenant_id, run_id)
    except engine.NotRunningError:
        raise ConflictError(f"Workflow run {run_id} has ended already.") from None
    if cancelled is None:
        raise NotFoundError(f"No workflow run {run_id}.")
    audit.record(session, tenant_id, "workflow.cancelled", actor, ("workflow_run", run_id))
    return cancelled


async def replay_step(
    session: AsyncSession, starter: Starter, run_id: uuid.UUID, step: str
) -> engine.Advanced:
    """Start a failed workflow run again from its failed step (404 unknown run or step, 409
    when the run has not failed or the step did not); what to publish once committed."""
    try:
        advanced = await engine.replay(
            await session.connection(), starter.context, starter.tenant_id, run_id, step
        )
    except engine.NotReplayableError:
        raise ConflictError(
            f"Step {step!r} of workflow run {run_id} cannot be replayed: only a failed step "
            "of a failed workflow run can."
        ) from None
    except KeyError:
        raise NotFoundError(f"Workflow run {run_id} has no step named {step!r}.") from None
    if advanced is None:
        raise NotFoundError(f"No workflow run {run_id}.")
    audit.record(
        session,
        starter.tenant_id,
        "workflow.replayed",
        starter.submitted_by,
        ("workflow_run", run_id),
        {"step": step},
    )
    return advanced
