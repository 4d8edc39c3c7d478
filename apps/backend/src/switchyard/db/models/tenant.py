from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, String, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, column_property, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey, string_enum
from switchyard.db.models.plan import Plan

# Owns everything until authentication assigns real tenants; created by migration 0002.
DEFAULT_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    # Its deletion is under way (tenants.deletion): it is refused like a suspended one.
    DELETING = "deleting"


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


class TenantDeletion(UUIDPrimaryKey, Timestamps, Base):
    """A tenant's deletion: scheduled by its owner or the superuser, cancellable until it is
    due (`delete_after`); then beat erases every trace of the tenant (tenants.deletion). Once
    done, this row is the tombstone: which tenant, when, at whose request, what was removed.
    It keeps no foreign key (it outlives the tenant) and no other data of the tenant's."""

    __tablename__ = "tenant_deletions"
    __table_args__ = (
        # One deletion in progress per tenant (scheduled or under way).
        Index(
            "ix_tenant_deletions_open",
            "target_tenant_id",
            unique=True,
            postgresql_where=text("cancelled_at IS NULL AND finished_at IS NULL"),
        ),
        Index(
            "ix_tenant_deletions_due",
            "delete_after",
            postgresql_where=text("cancelled_at IS NULL AND finished_at IS NULL"),
        ),
    )

    target_tenant_id: Mapped[uuid.UUID]
    requested_by: Mapped[str] = mapped_column(String(200))
    delete_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_by: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What went, by store and table: {"task_runs": 1000000, "objects": 12, ...}.
    removed: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
