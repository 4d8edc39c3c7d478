from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey, string_enum


class RunState(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.DEAD_LETTERED, RunState.CANCELLED}
)


def _listed(states: tuple[RunState, ...]) -> str:
    return ", ".join(f"'{state.value}'" for state in states)


# A run's states as SQL predicates, named once: the partial indexes below, the ledger's
# queries (platform.runs), retention and metrics use these. Literals, not parameters:
# PostgreSQL proves that a partial index serves a query from the statement's text.
IN_FLIGHT_STATES = (RunState.QUEUED, RunState.STARTED, RunState.RETRYING)
FINAL_ORDER = (RunState.SUCCEEDED, RunState.FAILED, RunState.DEAD_LETTERED, RunState.CANCELLED)
DUE_STATES = (RunState.QUEUED, RunState.SCHEDULED, RunState.RETRYING)
# Final: nothing changes it again.
FINAL = f"state IN ({_listed(FINAL_ORDER)})"
# Waiting for its tenant's share (`waiting_for_capacity`): never published until admitted.
WAITING = f"admitted_at IS NULL AND state = '{RunState.QUEUED.value}'"
# Holding a slot of its tenant's share: admitted and not final.
IN_FLIGHT = f"admitted_at IS NOT NULL AND state IN ({_listed(IN_FLIGHT_STATES)})"
# Delivered unadmitted (a delayed run come due): admitted then, or parked as waiting.
UNADMITTED_DUE = f"admitted_at IS NULL AND state IN ({_listed(DUE_STATES)})"
# An accepted run whose publish is not recorded: admitted (or delayed, published unadmitted).
OUTBOX = (
    f"published_at IS NULL AND (admitted_at IS NOT NULL OR state = '{RunState.SCHEDULED.value}')"
)


class TaskRun(UUIDPrimaryKey, Timestamps, Base):
    """The ledger: one row per accepted run, written before the message is published."""

    __tablename__ = "task_runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        UniqueConstraint("definition_id", "scheduled_for"),
        Index("ix_task_runs_tenant_id_created_at", "tenant_id", "created_at"),
        # The runs list's filters, newest first (the console's runs page).
        Index("ix_task_runs_tenant_id_state_created_at", "tenant_id", "state", "created_at"),
        Index("ix_task_runs_tenant_id_task_created_at", "tenant_id", "task", "created_at"),
        # Beat's outbox: accepted runs not yet published. Not the runs waiting for their
        # tenant's share (unpublished by design, and a backlog can be millions).
        Index(
            "ix_task_runs_outbox",
            "created_at",
            postgresql_where=text(OUTBOX),
        ),
        # Fair share (platform.runs.admission): a tenant's runs waiting for capacity, oldest
        # first, and its runs holding a slot.
        Index(
            "ix_task_runs_waiting",
            "tenant_id",
            "created_at",
            postgresql_where=text(WAITING),
        ),
        Index(
            "ix_task_runs_in_flight",
            "tenant_id",
            postgresql_where=text(IN_FLIGHT),
        ),
        # Retention (platform.runs.retention): a tenant's final runs, oldest finished first; keyed
        # runs, oldest first (the keys expire before the runs).
        Index(
            "ix_task_runs_finished",
            "tenant_id",
            "finished_at",
            postgresql_where=text(FINAL),
        ),
        Index(
            "ix_task_runs_keyed",
            "created_at",
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # replay_of's ON DELETE SET NULL: a deleted run finds its replays without a scan.
        Index(
            "ix_task_runs_replay_of", "replay_of", postgresql_where=text("replay_of IS NOT NULL")
        ),
        # A step's runs, in its items' order (its results, for the steps after it).
        Index(
            "ix_task_runs_workflow_step",
            "workflow_step_id",
            "item_index",
            postgresql_where=text("workflow_step_id IS NOT NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(200))
    definition_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("task_definitions.id", ondelete="SET NULL")
    )
    queue: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[RunState] = mapped_column(string_enum(RunState, "run_state"))
    result: Mapped[Any | None] = mapped_column(JSONB)
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    eta: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the run got a slot of its tenant's share; NULL while it waits for capacity (and
    # for a delayed run until it is due). See platform.runs.admission.
    admitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The W3C traceparent of the request that submitted it (TRACING on; switchyard.tracing).
    trace_parent: Mapped[str | None] = mapped_column(String(55))
    submitted_by: Mapped[str | None] = mapped_column(String(200))
    replay_of: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("task_runs.id", ondelete="SET NULL")
    )
    # A step's run (switchyard.platform.workflows): its step, and its item of the step's map.
    # It goes with its workflow run (retention, deletion).
    workflow_step_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("workflow_steps.id", ondelete="CASCADE")
    )
    item_index: Mapped[int | None] = mapped_column()
