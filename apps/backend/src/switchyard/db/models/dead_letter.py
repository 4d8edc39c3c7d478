from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey


class DeadLetter(UUIDPrimaryKey, Timestamps, Base):
    """A message the broker dead-lettered, archived by the worker for inspection and replay."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_tenant_id_created_at", "tenant_id", "created_at"),
        # replayed_run_id's ON DELETE SET NULL: a deleted run finds its letter without a scan.
        Index(
            "ix_dead_letters_replayed_run_id",
            "replayed_run_id",
            postgresql_where=text("replayed_run_id IS NOT NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("task_runs.id", ondelete="SET NULL"), unique=True
    )
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    reason: Mapped[str] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    dead_lettered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB)
    replayed_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("task_runs.id", ondelete="SET NULL")
    )
