from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base


class UsageCounter(Base):
    """What a tenant used in one hour (UTC), by meter and subject (a model, a task, a
    provider): a counter each use adds to (services.usage). Amounts are whole numbers in the
    meter's unit (tokens, texts, attempts, milliseconds, bytes); a meter of a stock (stored
    bytes, documents) is kept as changes, so its level is the sum over all hours."""

    __tablename__ = "usage_counters"
    __table_args__ = (
        # What changed lately: shipped to the analytics bind when one is configured.
        Index("ix_usage_counters_updated_at", "updated_at"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LlmReservation(Base):
    """Tokens an LLM call in flight may spend, held against its tenant's budget until the
    call's actual tokens are recorded (services.quotas.LlmBudget); one left by a process that
    died lapses at `expires_at`."""

    __tablename__ = "llm_reservations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    tokens: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
