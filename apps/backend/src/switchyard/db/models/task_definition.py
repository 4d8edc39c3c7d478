from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey


class TaskDefinition(UUIDPrimaryKey, Timestamps, Base):
    """A named, pre-filled run of a registered task, optionally on a schedule."""

    __tablename__ = "task_definitions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        # No schedule is SQL NULL, never the JSON value null (beat selects IS NOT NULL).
        CheckConstraint("jsonb_typeof(schedule) = 'object'", name="schedule_object"),
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
