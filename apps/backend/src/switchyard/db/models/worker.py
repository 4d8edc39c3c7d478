from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base


class WorkerSlots(Base):
    """A worker process online and how many runs it holds at once (WORKER_CONCURRENCY): fair
    share divides the sum of those seen lately (platform.runs.admission)."""

    __tablename__ = "worker_slots"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)  # host:pid
    slots: Mapped[int]
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
