"""Plans: what a tenant may use, defined by the platform superuser (`/api/v1/plans`)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, CheckConstraint, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey

# The limits a plan sets and a tenant may override (`tenants.limit_overrides`), in one order.
# NULL: no limit (for the rate limits, the RATE_LIMIT_* setting; for runs in flight, the
# TENANT_MAX_RUNS_IN_FLIGHT setting).
LIMITS: Final = (
    "llm_tokens_per_month",
    "llm_tokens_per_day",
    "runs_per_month",
    "runs_per_day",
    "run_seconds_per_month",
    "stored_bytes",
    "documents",
    "api_requests_per_minute",
    "task_runs_per_minute",
    "runs_in_flight",
)


class Plan(UUIDPrimaryKey, Timestamps, Base):
    """A named set of limits; a tenant is on one (`tenants.plan_id`) or none (no quota)."""

    __tablename__ = "plans"
    __table_args__ = (
        *(CheckConstraint(f"{name} >= 0", name=f"{name}_not_negative") for name in LIMITS),
        CheckConstraint("soft_limit_percent BETWEEN 1 AND 100", name="soft_limit_percent_range"),
    )

    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="", server_default="")
    llm_tokens_per_month: Mapped[int | None] = mapped_column(BigInteger)
    llm_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    runs_per_month: Mapped[int | None] = mapped_column(BigInteger)
    runs_per_day: Mapped[int | None] = mapped_column(BigInteger)
    run_seconds_per_month: Mapped[int | None] = mapped_column(BigInteger)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    documents: Mapped[int | None] = mapped_column(BigInteger)
    api_requests_per_minute: Mapped[int | None] = mapped_column()
    task_runs_per_minute: Mapped[int | None] = mapped_column()
    runs_in_flight: Mapped[int | None] = mapped_column()
    # A quota's use past this share of its limit is announced once a period (services.quotas).
    soft_limit_percent: Mapped[int] = mapped_column(SmallInteger, default=80, server_default="80")
