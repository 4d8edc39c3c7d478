"""Running one delivery of a registered task: claim in the ledger, validate, call, record."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from switchyard import tracing
from switchyard.db.engine import once_more_if_dropped
from switchyard.db.models import RunState, TaskRun
from switchyard.logging import RunLogContext, request_id_var, run_log_context, tenant_id_var
from switchyard.platform.metrics import TASK_DURATION, TASK_EVENTS
from switchyard.platform.registry import TaskContext, TaskSpec
from switchyard.platform.runs import admission, changes, ledger
from switchyard.services.container import Services

logger = logging.getLogger("switchyard.tasks")


class InvalidPayloadError(Exception):
    """The stored payload no longer matches the task's input schema."""


@dataclass(frozen=True)
class Outcome:
    kind: Literal["done", "skipped", "parked", "retry", "dead_letter", "cancelled", "requeue"]
    delay: int = 0
    error: BaseException | None = None


async def _record(
    services: Services,
    run_id: uuid.UUID,
    state: RunState,
    *,
    result: Any = None,
    error: BaseException | None = None,
    elapsed: float = 0.0,
    step: bool | None = None,
) -> bool:
    """Record an attempt's outcome (and its usage: `elapsed` seconds of its handler); `step`:
    whether the run is a workflow step's (None: not known here)."""
    outcome = ledger.Finish(run_id, state, result, error, round(elapsed * 1000), step)
    run = await _writes(services).finish(outcome)
    if run is None:
        return False
    await changes.changed(services, run)
    return True


def _writes(services: Services) -> ledger.GroupWrites:
    """The process's ledger writes in groups (TASK_GROUP_COMMIT_MS, TASK_GROUP_COMMIT_RUNS),
    workflow steps' outcomes with their workflows' advance."""
    settings = services.settings
    return ledger.GroupWrites.of(
        services.database_engine,
        window_seconds=settings.task_group_commit_ms / 1000,
        most=settings.task_group_commit_runs,
        metered=settings.usage_metering,
        steps=services.workflow_steps,
    )


async def close_writes(services: Services) -> None:
    """Write the claims and outcomes still pending (a worker process stopping)."""
    if services.database is not None:
        await _writes(services).close()


async def record_outcome(
    services: Services,
    spec: TaskSpec[Any],
    run_id: uuid.UUID,
    error: BaseException,
    elapsed: float = 0.0,
) -> bool:
    """Fail a run stopped from outside its handler (its time limit) after `elapsed` seconds;
    False when it was no longer `started` (cancelled or concluded meanwhile)."""
    TASK_EVENTS.labels(task=spec.name, event="failed").inc()
    return await _record(services, run_id, RunState.FAILED, error=error, elapsed=elapsed)


async def hand_back(services: Services, run_id: uuid.UUID) -> None:
    """Stopped by a shutdown: the run is `queued` again before its message goes back."""
    run = await once_more_if_dropped(
        services.database_engine, lambda connection, _: ledger.hand_back(connection, run_id)
    )
    if run is not None:
        await changes.changed(services, run)


async def died_in(services: Services, run_id: uuid.UUID) -> int | None:
    """For a redelivered run whose last worker died while it ran (it is still `started`), its
    attempts so far; None otherwise."""
    return await once_more_if_dropped(
        services.database_engine, lambda connection, _: ledger.started_attempts(connection, run_id)
    )


async def _admit_due(services: Services, run_id: uuid.UUID) -> bool:
    """Admit a delayed run that came due, or park it in the ledger (its message is then
    acked, and a freed slot of its tenant publishes it again). True when admitted."""
    async with services.database_engine.begin() as connection:
        tenant_id = await connection.scalar(select(TaskRun.tenant_id).where(TaskRun.id == run_id))
        if tenant_id is None:
            return False
        policy = admission.Policy.of(services.settings)
        return await admission.admit_due(connection, run_id, tenant_id, policy)


async def execute(
    services: Services,
    spec: TaskSpec[Any],
    run_id: uuid.UUID,
    *,
    redelivered: bool,
    tenant_id: uuid.UUID | None = None,
    request_id: str | None = None,
    trace_parent: str | None = None,
) -> Outcome:
    """Run one attempt in the run's tenant; the caller acks, retries or rejects on the outcome.

    Every log line of the attempt carries the run's task id, tenant and the request id of the
    HTTP call that submitted it (from the message, else from the ledger). With TRACING, the
    attempt is a span of the submitting request's trace (its statements, Redis commands and
    HTTP calls spans of it)."""
    context = RunLogContext(str(run_id), request_id, str(tenant_id) if tenant_id else None)
    with run_log_context(context):
        if not tracing.enabled():
            return await _attempt(services, spec, run_id, redelivered, tenant_id)
        attributes = {"switchyard.run_id": str(run_id), "switchyard.task": spec.name}
        if tenant_id is not None:
            attributes["switchyard.tenant_id"] = str(tenant_id)
        with tracing.attempt_span(spec.name, trace_parent, attributes):
            return await _attempt(services, spec, run_id, redelivered, tenant_id)


async def _claim(
    services: Services, run_id: uuid.UUID, redelivered: bool, tenant_id: uuid.UUID | None
) -> tuple[ledger.RunChange | None, Outcome | None]:
    """Start the run in the ledger: (the run, None), or (None, why not as an outcome)."""

    async def claim(
        connection: AsyncConnection, retried: bool
    ) -> tuple[ledger.RunChange | None, str | None]:
        # Repeated after a dropped connection as a redelivery: if the first claim did reach
        # the database, the run is `started` by us, and the repeat takes it over.
        run = await ledger.claim(
            connection, run_id, redelivered=redelivered or retried, tenant_id=tenant_id
        )
        if run is not None:
            return run, None
        found = (
            await connection.execute(
                select(TaskRun.tenant_id, TaskRun.state, TaskRun.admitted_at).where(
                    TaskRun.id == run_id
                )
            )
        ).first()
        if found is None:
            return None, "skipped"
        if tenant_id is not None and found.tenant_id != tenant_id:
            return None, "foreign"
        if found.state in ledger.CLAIMABLE:
            if found.admitted_at is None:
                return None, "due"
            # Admitted just after the claim looked (admissions commit before they publish,
            # so only a race with a sweep gets here): claimed now.
            run = await ledger.claim(
                connection, run_id, redelivered=redelivered or retried, tenant_id=tenant_id
            )
            return run, None if run is not None else "skipped"
        return None, "skipped"

    if not redelivered and tenant_id is not None:
        # The common case, in a group; a run it did not start is claimed (or explained) alone.
        grouped = await _writes(services).claim(run_id, tenant_id)
        if grouped is not None:
            return grouped, None
    run, why = await once_more_if_dropped(services.database_engine, claim)
    if why == "due":
        # A delayed run come due: admitted if its tenant has a slot free, else parked.
        if not await _admit_due(services, run_id):
            logger.info("delayed run due while its tenant is at its share: waiting for a slot")
            return None, Outcome("parked")
        run, why = await once_more_if_dropped(services.database_engine, claim)
    if why == "foreign":
        logger.error("delivery refused: its tenant is not the run's")
    elif run is None:
        logger.info("delivery skipped: run is final, running or unknown")
    return run, None if run is not None else Outcome("skipped")


async def _attempt(
    services: Services,
    spec: TaskSpec[Any],
    run_id: uuid.UUID,
    redelivered: bool,
    tenant_id: uuid.UUID | None,
) -> Outcome:
    run, refused = await _claim(services, run_id, redelivered, tenant_id)
    if refused is not None or run is None:
        TASK_EVENTS.labels(task=spec.name, event=refused.kind if refused else "skipped").inc()
        return refused or Outcome("skipped")
    step = run.workflow_step_id is not None
    tenant_id_var.set(str(run.tenant_id))
    if request_id_var.get() is None and run.request_id:
        request_id_var.set(run.request_id)
    TASK_EVENTS.labels(task=spec.name, event="started").inc()
    await changes.changed(services, run)
    log = logging.LoggerAdapter(logger, {"task": spec.name, "attempt": run.attempts})
    try:
        payload = spec.validate(run.payload, services.settings.environment)
    except ValidationError as exc:
        error = InvalidPayloadError(
            f"payload does not match {spec.name}: {exc.error_count()} errors"
        )
        await _record(services, run_id, RunState.FAILED, error=error, step=step)
        TASK_EVENTS.labels(task=spec.name, event="failed").inc()
        return Outcome("dead_letter", error=error)

    context = TaskContext(services, run.tenant_id, run_id, run.attempts, log)
    started = time.perf_counter()

    def finished(event: str) -> None:
        TASK_EVENTS.labels(task=spec.name, event=event).inc()
        TASK_DURATION.labels(task=spec.name, outcome=event).observe(time.perf_counter() - started)

    try:
        async with asyncio.timeout(spec.soft_time_limit):
            result = await spec.handler(payload, context)
    except Exception as exc:
        if spec.retry.retries(exc) and run.attempts <= spec.retry.max_retries:
            delay = spec.retry.delay(run.attempts)
            finished("retried")
            log.warning("attempt failed; retrying in %s s", delay, extra={"error": repr(exc)})
            elapsed = time.perf_counter() - started
            retrying = RunState.RETRYING
            if await _record(services, run_id, retrying, error=exc, elapsed=elapsed, step=step):
                return Outcome("retry", delay=delay, error=exc)
            return Outcome("done")
        finished("failed")
        log.error("run failed", extra={"error": repr(exc)})
        elapsed = time.perf_counter() - started
        if await _record(services, run_id, RunState.FAILED, error=exc, elapsed=elapsed, step=step):
            return Outcome("dead_letter", error=exc)
        return Outcome("done")
    finished("succeeded")
    elapsed = time.perf_counter() - started
    result = to_jsonable_python(result)
    succeeded = RunState.SUCCEEDED
    await _record(services, run_id, succeeded, result=result, elapsed=elapsed, step=step)
    log.info("run succeeded")
    return Outcome("done")
