"""Runs the platform starts on its own behalf (account email), where the action that asks for
one must not fail because the broker is down: the run is submitted in the caller's unit of
work (platform.submission, `OnRefusal.KEEP`) and published once that commits; if the broker
refuses, or the role has none, it stays in the ledger and beat's outbox publishes it
(TASK_REPUBLISH_AFTER_SECONDS). Nothing is lost and the caller is not refused; the run shows
the delay. These runs are admitted outside the tenant's fair share (`outside_share`, see
docs/operations.md, "Fair share"): a sign-up's email does not wait behind a backlog."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import RunState, TaskRun
from switchyard.errors import ServiceUnavailableError
from switchyard.logging import request_id_var
from switchyard.platform.submission import NO_BROKER, OnRefusal, Submissions

SUBMITTED_BY = "platform"


@dataclass(frozen=True)
class Outbox:
    submissions: Submissions | None  # None: a role without a database

    @property
    def ready(self) -> bool:
        """Whether this role has a broker at all (one that is down is the outbox's business)."""
        return self.submissions is not None and self.submissions.broker is not None

    def require(self) -> None:
        """503 naming CELERY_BROKER_URL in a role without a broker: nothing is accepted that
        only a beat elsewhere could ever publish."""
        if not self.ready:
            raise ServiceUnavailableError(NO_BROKER)

    async def submit(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        task: str,
        payload: dict[str, Any],
        queue: str = "default",
    ) -> TaskRun:
        """Submit a run of `task` in `session`'s unit of work; published after the commit."""
        if self.submissions is None:
            raise ServiceUnavailableError("No database is configured (DATABASE_URL).")
        run = TaskRun(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            task=task,
            queue=queue,
            payload=payload,
            state=RunState.QUEUED,
            attempts=0,
            request_id=request_id_var.get(),
            submitted_by=SUBMITTED_BY,
        )
        await self.submissions.submit(
            [run], on_refusal=OnRefusal.KEEP, within=session, outside_share=True
        )
        return run
