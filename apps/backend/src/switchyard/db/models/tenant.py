from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey, string_enum

# Owns everything until authentication assigns real tenants; created by migration 0002.
DEFAULT_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Tenant(UUIDPrimaryKey, Timestamps, Base):
    """An isolated customer organisation; every other row belongs to one."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("max_runs_in_flight > 0", name="max_runs_in_flight_positive"),
        CheckConstraint("run_retention_days BETWEEN 0 AND 3650", name="run_retention_days_range"),
        CheckConstraint(
            "dead_letter_retention_days BETWEEN 0 AND 3650", name="dead_letter_retention_days_range"
        ),
    )

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[TenantStatus] = mapped_column(
        string_enum(TenantStatus, "tenant_status"),
        default=TenantStatus.ACTIVE,
        server_default=TenantStatus.ACTIVE.value,
    )
    # Runs in flight at once across all workers; NULL: TENANT_MAX_RUNS_IN_FLIGHT. Set by the
    # platform superuser (PATCH /tenants/{id}).
    max_runs_in_flight: Mapped[int | None] = mapped_column()
    # How long its final runs and its dead letters are kept (0: for ever); NULL: the
    # RUN_RETENTION_DAYS / DEAD_LETTER_RETENTION_DAYS default. Set by the platform superuser.
    run_retention_days: Mapped[int | None] = mapped_column()
    dead_letter_retention_days: Mapped[int | None] = mapped_column()
