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

from switchyard.db.models import RunState, TaskRun
from switchyard.logging import RunLogContext, request_id_var, run_log_context, tenant_id_var
from switchyard.platform import events, ledger
from switchyard.platform.metrics import TASK_DURATION, TASK_EVENTS
from switchyard.platform.registry import TaskContext, TaskSpec
from switchyard.services.container import Services
from switchyard.services.postgres import once_more_if_dropped

logger = logging.getLogger("switchyard.tasks")


class InvalidPayloadError(Exception):
    """The stored payload no longer matches the task's input schema."""


@dataclass(frozen=True)
class Outcome:
    kind: Literal["done", "skipped", "retry", "dead_letter", "cancelled", "requeue"]
    delay: int = 0
    error: BaseException | None = None


async def _record(
    services: Services,
    run_id: uuid.UUID,
    state: RunState,
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> bool:
    assert services.database is not None
    # Safe to repeat: the update applies only to a `started` run.
    run = await once_more_if_dropped(
        services.database,
        lambda connection, _: ledger.finish(connection, run_id, state, result=result, error=error),
    )
    if run is None:
        return False
    await events.publish(services.redis_breaker, services.settings.cache_namespace, run)
    return True


async def record_outcome(
    services: Services, spec: TaskSpec[Any], run_id: uuid.UUID, error: BaseException
) -> bool:
    """Fail a run stopped from outside its handler (its time limit); False when it was no
    longer `started` (cancelled or concluded meanwhile)."""
    TASK_EVENTS.labels(task=spec.name, event="failed").inc()
    return await _record(services, run_id, RunState.FAILED, error=error)


async def hand_back(services: Services, run_id: uuid.UUID) -> None:
    """Stopped by a shutdown: the run is `queued` again before its message goes back."""
    assert services.database is not None
    run = await once_more_if_dropped(
        services.database, lambda connection, _: ledger.hand_back(connection, run_id)
    )
    if run is not None:
        await events.publish(services.redis_breaker, services.settings.cache_namespace, run)


async def died_in(services: Services, run_id: uuid.UUID) -> int | None:
    """For a redelivered run whose last worker died while it ran (it is still `started`), its
    attempts so far; None otherwise."""
    assert services.database is not None
    return await once_more_if_dropped(
        services.database, lambda connection, _: ledger.started_attempts(connection, run_id)
    )


async def execute(
    services: Services,
    spec: TaskSpec[Any],
    run_id: uuid.UUID,
    *,
    redelivered: bool,
    tenant_id: uuid.UUID | None = None,
    request_id: str | None = None,
) -> Outcome:
    """Run one attempt in the run's tenant; the caller acks, retries or rejects on the outcome.

    Every log line of the attempt carries the run's task id, tenant and the request id of the
    HTTP call that submitted it (from the message, else from the ledger)."""
    context = RunLogContext(str(run_id), request_id, str(tenant_id) if tenant_id else None)
    with run_log_context(context):
        outcome = await _attempt(services, spec, run_id, redelivered, tenant_id)
    return outcome


async def _attempt(
    services: Services,
    spec: TaskSpec[Any],
    run_id: uuid.UUID,
    redelivered: bool,
    tenant_id: uuid.UUID | None,
) -> Outcome:
    assert services.database is not None

    async def claim(
        connection: AsyncConnection, retried: bool
    ) -> tuple[ledger.RunChange | None, bool]:
        # Repeated after a dropped connection as a redelivery: if the first claim did reach
        # the database, the run is `started` by us, and the repeat takes it over.
        run = await ledger.claim(
            connection, run_id, redelivered=redelivered or retried, tenant_id=tenant_id
        )
        if run is None and tenant_id is not None:
            owner = await connection.scalar(select(TaskRun.tenant_id).where(TaskRun.id == run_id))
            return None, owner is not None and owner != tenant_id
        return run, False

    run, foreign = await once_more_if_dropped(services.database, claim)
    if foreign:
        logger.error("delivery refused: its tenant is not the run's")
        TASK_EVENTS.labels(task=spec.name, event="skipped").inc()
        return Outcome("skipped")
    if run is None:
        logger.info("delivery skipped: run is final, running or unknown")
        TASK_EVENTS.labels(task=spec.name, event="skipped").inc()
        return Outcome("skipped")
    tenant_id_var.set(str(run.tenant_id))
    if request_id_var.get() is None and run.request_id:
        request_id_var.set(run.request_id)
    TASK_EVENTS.labels(task=spec.name, event="started").inc()
    await events.publish(services.redis_breaker, services.settings.cache_namespace, run)
    log = logging.LoggerAdapter(logger, {"task": spec.name, "attempt": run.attempts})
    try:
        payload = spec.input_model.model_validate(run.payload)
    except ValidationError as exc:
        error = InvalidPayloadError(
            f"payload does not match {spec.name}: {exc.error_count()} errors"
        )
        await _record(services, run_id, RunState.FAILED, error=error)
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
            if await _record(services, run_id, RunState.RETRYING, error=exc):
                return Outcome("retry", delay=delay, error=exc)
            return Outcome("done")
        finished("failed")
        log.error("run failed", extra={"error": repr(exc)})
        if await _record(services, run_id, RunState.FAILED, error=exc):
            return Outcome("dead_letter", error=exc)
        return Outcome("done")
    finished("succeeded")
    await _record(services, run_id, RunState.SUCCEEDED, result=to_jsonable_python(result))
    log.info("run succeeded")
    return Outcome("done")
