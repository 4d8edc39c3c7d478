"""Bodies of /tenants. A tenant's summary (`TenantSummary`) is the auth domain's: sign-up and
sign-in answer with it too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


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

    @model_validator(mode="after")
    def _some_field(self) -> TenantLimits:
        if not self.model_fields_set:
            raise ValueError("give at least one of " + ", ".join(type(self).model_fields))
        return self

    def given(self) -> dict[str, int | None]:
        """The fields the request set (an omitted field keeps its value)."""
        return self.model_dump(include=self.model_fields_set)
