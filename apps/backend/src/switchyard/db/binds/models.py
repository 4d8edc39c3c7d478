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


class UsageCounterCopy(AnalyticsBase):
    """The main database's `usage_counters`, copied by beat (services.usage.ship): what each
    tenant used per hour, by meter and subject, for reporting outside PostgreSQL."""

    __tablename__ = "usage_counters"
    __table_args__ = (Index("ix_usage_counters_updated_at", "updated_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
