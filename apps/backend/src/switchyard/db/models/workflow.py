from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey, string_enum


class WorkflowDefinition(UUIDPrimaryKey, Timestamps, Base):
    """One version of a named workflow: its steps, validated when it was registered. A changed
    definition is a new row (the next version); runs keep the version they started with. A
    deleted workflow's versions stay (`deleted_at`) while runs may still refer to them."""

    __tablename__ = "workflow_definitions"
    # Also the index of a name's versions, latest first (the one a run starts by default).
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    # The steps as registered (switchyard.workflows.graph normalised them), and their digest:
    # registering the same steps again names this version instead of making another.
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    digest: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(200))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkflowState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepState(StrEnum):
    WAITING = "waiting"  # for its parents
    RUNNING = "running"  # its runs are in the ledger
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # its workflow ended before it was due
    CANCELLED = "cancelled"  # its workflow was cancelled while it ran


class WorkflowRun(UUIDPrimaryKey, Timestamps, Base):
    """One run of one version of a workflow: its input, its state, and how many of its steps
    are not final yet (it ends when none is)."""

    __tablename__ = "workflow_runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_workflow_runs_tenant_id_created_at", "tenant_id", "created_at"),
        # Retention (platform.runs.retention): a tenant's ended workflow runs, oldest first.
        Index(
            "ix_workflow_runs_finished",
            "tenant_id",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    definition_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflow_definitions.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[WorkflowState] = mapped_column(string_enum(WorkflowState, "workflow_state"))
    input: Mapped[Any] = mapped_column(JSONB)
    steps_left: Mapped[int] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    submitted_by: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(128))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkflowStep(UUIDPrimaryKey, Timestamps, Base):
    """A step of a workflow run: waiting for `parents_left` parents, then its runs (one, or one
    per item of its map) in the ledger, `items_left` of them not final yet."""

    __tablename__ = "workflow_steps"
    __table_args__ = (UniqueConstraint("workflow_run_id", "name"),)

    workflow_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    state: Mapped[StepState] = mapped_column(string_enum(StepState, "workflow_step_state"))
    parents_left: Mapped[int] = mapped_column(Integer)
    items: Mapped[int | None] = mapped_column(Integer)
    items_left: Mapped[int | None] = mapped_column(Integer)
    failed_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
