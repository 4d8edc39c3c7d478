"""Dead letters: read what the broker dead-lettered and archive it in `dead_letters`."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import DEFAULT_TENANT_ID, DeadLetter, TaskRun
from switchyard.platform.metrics import TASK_EVENTS
from switchyard.platform.runs import changes, ledger
from switchyard.services.container import Services

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetterRecord:
    run_id: uuid.UUID | None
    task: str
    queue: str
    reason: str
    count: int
    dead_lettered_at: datetime
    headers: dict[str, Any]
    error: str | None = None  # why, when no run of the ledger can say


def _parse_uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def parse(headers: dict[str, Any], body: object) -> DeadLetterRecord:
    """What the broker tells of a dead letter: Celery's headers plus `x-death`."""
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    ours = [d for d in deaths if not str(d.get("queue", "")).startswith("celery_delayed")]
    death = (ours or deaths or [{}])[0]
    run_id = _parse_uuid(headers.get("id"))
    if run_id is None and isinstance(body, list | tuple) and body and body[0]:
        run_id = _parse_uuid(body[0][0])
    when = death.get("time")
    return DeadLetterRecord(
        run_id=run_id,
        task=str(headers.get("task") or "unknown"),
        queue=str(death.get("queue") or headers.get("x-first-death-queue") or "unknown"),
        reason=str(death.get("reason") or headers.get("x-first-death-reason") or "unknown"),
        count=int(death.get("count") or 1),
        dead_lettered_at=when if isinstance(when, datetime) else datetime.now(UTC),
        headers={"x-death": jsonable(deaths)},
    )


async def archive(services: Services, record: DeadLetterRecord) -> None:
    """Store the dead letter once (redelivery is harmless) and end its run."""
    steps = services.workflow_steps  # a workflow's step run it ended: its workflow goes on
    async with services.database_sessions.begin() as session:
        run, inserted, ended = await store(session, record)
        advanced = await steps.ended(session, [run]) if steps and run and ended else None
    if run is not None:
        await changes.changed(services, run)
    if advanced is not None:
        await steps.after(advanced)
    if inserted:
        TASK_EVENTS.labels(task=record.task, event="dead_lettered").inc()
    logger.warning(
        "dead letter archived",
        extra={"task_id": str(record.run_id), "task": record.task, "reason": record.reason},
    )


async def store(
    session: AsyncSession, record: DeadLetterRecord
) -> tuple[TaskRun | None, int, bool]:
    """In the session's transaction: end the record's run (unless final) and insert the dead
    letter once; (the run, rows inserted, whether this ended the run)."""
    run: TaskRun | None = None
    ended = False
    if record.run_id is not None:
        run = await ledger.mark_dead_lettered(session, record.run_id)
        ended = run is not None
        if run is None:
            run = await session.get(TaskRun, record.run_id)
    when = record.dead_lettered_at
    statement = (
        insert(DeadLetter)
        .values(
            # A message with no run behind it is kept by the system tenant.
            tenant_id=run.tenant_id if run else DEFAULT_TENANT_ID,
            run_id=run.id if run else None,
            task=record.task,
            queue=record.queue,
            payload=run.payload if run else None,
            reason=record.reason,
            last_error=_last_error(run) or record.error,
            attempts=run.attempts if run else record.count,
            dead_lettered_at=when if when.tzinfo else when.replace(tzinfo=UTC),
            headers=record.headers,
        )
        .on_conflict_do_nothing(index_elements=["run_id"])
    )
    inserted = cast("CursorResult[Any]", await session.execute(statement)).rowcount
    return run, inserted, ended


def _last_error(run: TaskRun | None) -> str | None:
    if run is None or run.error_type is None:
        return None
    return f"{run.error_type}: {run.error_message or ''}".strip()
