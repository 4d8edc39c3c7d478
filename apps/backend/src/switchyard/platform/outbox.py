"""Runs the platform starts on its own behalf (account email), where the action that asks for
one must not fail because the broker is down: the run is recorded in the caller's unit of
work and published once that commits; if the broker refuses, or the role has none, it stays
in the ledger and beat's outbox publishes it (TASK_REPUBLISH_AFTER_SECONDS). Nothing is lost
and the caller is not refused; the run shows the delay."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import RunState, TaskRun
from switchyard.db.session import after_commit
from switchyard.errors import ServiceUnavailableError
from switchyard.logging import request_id_var
from switchyard.platform.publisher import BrokerUnavailableError, RunPublisher
from switchyard.platform.runs import ledger

logger = logging.getLogger(__name__)

SUBMITTED_BY = "platform"


@dataclass(frozen=True)
class Outbox:
    publisher: RunPublisher | None
    marks: ledger.PublishedMarks | None

    @property
    def ready(self) -> bool:
        """Whether this role has a broker at all (one that is down is the outbox's business)."""
        return self.publisher is not None

    def require(self) -> None:
        """503 naming CELERY_BROKER_URL in a role without a broker: nothing is accepted that
        only a beat elsewhere could ever publish."""
        if self.publisher is None:
            raise ServiceUnavailableError("No task broker is configured (CELERY_BROKER_URL).")

    async def submit(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        task: str,
        payload: dict[str, Any],
        queue: str = "default",
    ) -> TaskRun:
        """Record a run of `task` in `session`'s unit of work; publish it after the commit."""
        run = TaskRun(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            task=task,
            queue=queue,
            payload=payload,
            state=RunState.QUEUED,
            attempts=0,
            admitted_at=datetime.now(UTC),
            request_id=request_id_var.get(),
            submitted_by=SUBMITTED_BY,
        )
        await ledger.record(await session.connection(), run)
        after_commit(session, lambda: self._publish(run))
        return run

    async def _publish(self, run: TaskRun) -> None:
        if self.publisher is None:
            return  # submitted anyway by a caller that did not `require`: beat's outbox
        try:
            await self.publisher.publish(
                str(run.id), run.task, run.queue, None, str(run.tenant_id), run.request_id
            )
        except BrokerUnavailableError:
            logger.warning(
                "broker unreachable; the outbox publishes the run later",
                extra={"run_id": str(run.id), "task": run.task},
            )
            return
        if self.marks is not None:
            self.marks.add(run.id)
