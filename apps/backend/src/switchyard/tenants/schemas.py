"""Bodies of /tenants. A tenant's summary (`TenantSummary`) is the auth domain's: sign-up and
sign-in answer with it too."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from switchyard.db.models.plan import LIMITS
from switchyard.db.models.task_run import RunState


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class TenantLimits(BaseModel):
    """What the platform superuser may set on a tenant. Only the fields given change; null
    puts a field back to its setting's default."""

    model_config = ConfigDict(extra="forbid")

    max_runs_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Runs of this tenant in flight at once across all workers; null: the "
        "TENANT_MAX_RUNS_IN_FLIGHT default",
    )
    run_retention_days: int | None = Field(
        default=None,
        ge=0,
        le=3650,
        description="Days its final runs are kept after they finished (0: for ever); null: "
        "the RUN_RETENTION_DAYS default",
    )
    dead_letter_retention_days: int | None = Field(
        default=None,
        ge=0,
        le=3650,
        description="Days its dead letters are kept (0: for ever); null: the "
        "DEAD_LETTER_RETENTION_DAYS default",
    )

    plan: str | None = Field(
        default=None,
        description="The name of its plan (`/plans`); null: none (no quota, the settings' "
        "rate limits and cap)",
    )
    limit_overrides: dict[str, Annotated[int, Field(ge=0, le=10**15)] | None] | None = Field(
        default=None,
        description="Its own values of some of its plan's limits (the same names; null: no "
        "limit), replacing all it had; null or {}: none",
    )

    @field_validator("limit_overrides")
    @classmethod
    def _overrides_known(cls, overrides: dict[str, int | None] | None) -> dict[str, int | None]:
        unknown = sorted(set(overrides or {}) - set(LIMITS))
        if unknown:
            raise ValueError(f"not limits: {', '.join(unknown)}; the limits: {', '.join(LIMITS)}")
        return overrides or {}

    @model_validator(mode="after")
    def _some_field(self) -> TenantLimits:
        if not self.model_fields_set:
            raise ValueError("give at least one of " + ", ".join(type(self).model_fields))
        return self

    def given(self) -> dict[str, Any]:
        """The fields the request set (an omitted field keeps its value)."""
        return self.model_dump(include=self.model_fields_set)


_MOST: Final = 10**15  # a bound no real limit reaches, so a typo of ten digits is refused
LIMIT_DESCRIPTIONS: Final = {
    "llm_tokens_per_month": "LLM tokens (prompt, completion and embeddings) per calendar "
    "month, UTC; a run of a task that spends them is refused once they are spent, and a call "
    "that would pass them fails its run",
    "llm_tokens_per_day": "LLM tokens per day, UTC, as the monthly budget",
    "runs_per_month": "Runs accepted per calendar month, UTC",
    "runs_per_day": "Runs accepted per day, UTC",
    "run_seconds_per_month": "Seconds its runs' handlers ran per calendar month; new runs are "
    "refused once they are spent",
    "stored_bytes": "Bytes of documents stored; an upload past it is refused before it is stored",
    "documents": "Documents stored",
    "api_requests_per_minute": "Requests per minute of all its callers together, in place of "
    "the per-caller RATE_LIMIT_API",
    "task_runs_per_minute": "Runs submitted per minute, in place of RATE_LIMIT_TASK_RUNS",
    "runs_in_flight": "Runs in flight at once (fair share's cap), in place of "
    "TENANT_MAX_RUNS_IN_FLIGHT",
}
assert tuple(LIMIT_DESCRIPTIONS) == LIMITS


def _limit(name: str) -> Any:
    return Field(
        default=None, ge=0, le=_MOST, description=LIMIT_DESCRIPTIONS[name] + "; null: none"
    )


class PlanLimits(BaseModel):
    """A plan's limits; null is no limit."""

    model_config = ConfigDict(extra="forbid")

    llm_tokens_per_month: int | None = _limit("llm_tokens_per_month")
    llm_tokens_per_day: int | None = _limit("llm_tokens_per_day")
    runs_per_month: int | None = _limit("runs_per_month")
    runs_per_day: int | None = _limit("runs_per_day")
    run_seconds_per_month: int | None = _limit("run_seconds_per_month")
    stored_bytes: int | None = _limit("stored_bytes")
    documents: int | None = _limit("documents")
    api_requests_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000, description=LIMIT_DESCRIPTIONS["api_requests_per_minute"]
    )
    task_runs_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000, description=LIMIT_DESCRIPTIONS["task_runs_per_minute"]
    )
    runs_in_flight: int | None = Field(
        default=None, ge=1, le=100_000, description=LIMIT_DESCRIPTIONS["runs_in_flight"]
    )
    soft_limit_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Past this share of a quota, the tenant is warned once a period (an audit "
        "event `quota.soft_limit_reached`, a log line, a metric)",
    )


class PlanIn(PlanLimits):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Its name, as a slug")
    description: str = Field(default="", max_length=500)


class PlanPatch(PlanLimits):
    """Only the fields given change (a limit given as null is then no limit)."""

    description: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _some_field(self) -> PlanPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of " + ", ".join(type(self).model_fields))
        return self

    def given(self) -> dict[str, Any]:
        return self.model_dump(include=self.model_fields_set)


class PlanOut(PlanLimits):
    model_config = ConfigDict(extra="ignore", from_attributes=True)

    id: uuid.UUID
    name: str
    description: str
    tenants: int = Field(description="Tenants on it")
    created_at: datetime
    updated_at: datetime


class PlanPage(BaseModel):
    items: list[PlanOut]
    next_cursor: str | None = Field(default=None, description="Always null: one page holds all")


class ExportOut(BaseModel):
    """An export of the tenant's data: its run's state and, once it succeeded, the archive and
    a signed download link (GET it without a token; it expires at `download_expires_at`)."""

    id: uuid.UUID = Field(description="The export's id (its run's)")
    state: RunState
    requested_at: datetime
    requested_by: str | None
    finished_at: datetime | None = None
    error: str | None = None
    size_bytes: int | None = None
    tables: dict[str, int] | None = Field(default=None, description="Rows per table")
    objects: int | None = Field(default=None, description="Stored objects in the archive")
    download_url: str | None = None
    download_expires_at: datetime | None = None


class DeletionIn(BaseModel):
    """The superuser's schedule of a tenant's deletion."""

    model_config = ConfigDict(extra="forbid")

    grace_days: int | None = Field(
        default=None,
        ge=0,
        le=90,
        description="Days until it happens (cancellable until then); null: "
        "TENANT_DELETION_GRACE_DAYS; 0: at beat's next look",
    )


class DeletionOut(BaseModel):
    """A tenant's deletion: scheduled, cancelled, under way or done (then its tombstone)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID = Field(validation_alias="target_tenant_id")
    requested_by: str
    requested_at: datetime = Field(validation_alias="created_at")
    delete_after: datetime
    cancelled_at: datetime | None
    cancelled_by: str | None
    started_at: datetime | None
    finished_at: datetime | None
    removed: dict[str, int] = Field(description="What went, by store and table (once done)")


class DeletionPage(BaseModel):
    items: list[DeletionOut]
