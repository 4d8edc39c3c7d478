"""The notes table: tenant-owned (a `tenant_id`), newest-first pages (`created_at`, `id`)."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey


class Note(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_tenant_id_created_at", "tenant_id", "created_at", "id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    word_count: Mapped[int | None]
