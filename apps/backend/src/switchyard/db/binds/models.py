"""Models of the extra binds."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.binds import AnalyticsBase


class UsageEvent(AnalyticsBase):
    """Metered usage (LLM tokens, task runs, ...) per tenant, for reporting outside PostgreSQL."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_tenant_id_occurred_at", "tenant_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
