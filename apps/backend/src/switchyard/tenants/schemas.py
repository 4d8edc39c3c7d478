"""Bodies of /tenants. A tenant's summary (`TenantSummary`) is the auth domain's: sign-up and
sign-in answer with it too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class TenantLimits(BaseModel):
    """What the platform superuser may set on a tenant."""

    model_config = ConfigDict(extra="forbid")

    max_runs_in_flight: int | None = Field(
        ge=1,
        le=100_000,
        description="Runs of this tenant in flight at once across all workers; null: the "
        "TENANT_MAX_RUNS_IN_FLIGHT default",
    )
