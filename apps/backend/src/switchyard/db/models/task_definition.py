from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey

# The next tick of a schedule beat has not worked out yet: due at once.
UNPLANNED = datetime(1970, 1, 1, tzinfo=UTC)


def unplanned(context: Any) -> datetime | None:
    """A new definition's `next_due_at`: UNPLANNED with a schedule, NULL without."""
    return None if context.get_current_parameters().get("schedule") is None else UNPLANNED


class TaskDefinition(UUIDPrimaryKey, Timestamps, Base):
    """A named, pre-filled run of a registered task, optionally on a schedule."""

    __tablename__ = "task_definitions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        # No schedule is SQL NULL, never the JSON value null (beat selects IS NOT NULL).
        CheckConstraint("jsonb_typeof(schedule) = 'object'", name="schedule_object"),
        # A schedule always has its next tick (UNPLANNED until beat works it out).
        CheckConstraint("schedule IS NULL OR next_due_at IS NOT NULL", name="schedule_planned"),
        # Beat's scan for due definitions: the enabled scheduled ones, by their next tick.
        Index(
            "ix_task_definitions_due",
            "next_due_at",
            postgresql_where=text("enabled AND schedule IS NOT NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    queue: Mapped[str | None] = mapped_column(String(64))
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    enabled: Mapped[bool] = mapped_column(default=True, server_default="true")
    description: Mapped[str | None] = mapped_column(Text)
    last_scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The next tick, as beat worked it out; beat reads only the definitions due by now, through
    # `ix_task_definitions_due`. A new schedule is due at UNPLANNED (the epoch): beat works
    # out its first tick at once. NULL without a schedule.
    next_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=unplanned)
