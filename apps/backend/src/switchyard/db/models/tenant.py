from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, String, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, column_property, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey, string_enum
from switchyard.db.models.plan import Plan

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
    # Its plan (`/api/v1/plans`): NULL, none (no quota; the settings' rate limits and cap).
    # A plan in use cannot be deleted.
    plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    # Its own values of some of the plan's limits (db.models.plan.LIMITS; null: no limit),
    # set by the superuser; a limit not named here is the plan's.
    limit_overrides: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default="{}"
    )
    # The plan's name, read with the tenant; kept through a flush (refresh the tenant after
    # changing plan_id).
    plan: Mapped[str | None] = column_property(
        select(Plan.name).where(Plan.id == plan_id).correlate_except(Plan).scalar_subquery(),
        expire_on_flush=False,
    )
