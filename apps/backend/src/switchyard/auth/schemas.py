"""Bodies of /api/v1/auth and /api/v1/api-keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from switchyard.db.models import Role, Tenant

# The same names as auth.scopes.SCOPES (a unit test keeps the two equal).
Scope = Literal[
    "tasks:read",
    "tasks:run",
    "tasks:admin",
    "documents:read",
    "documents:write",
    "datasources:read",
    "datasources:write",
    "llm:use",
]


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    password: str = Field(max_length=1024)
    tenant_name: str = Field(min_length=1, max_length=200)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    password: str = Field(max_length=1024)
    tenant: str | None = Field(default=None, max_length=63, description="Tenant slug")


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=200)


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int
    refresh_token: str


class TenantSummary(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    status: str
    max_runs_in_flight: int | None = Field(
        default=None, description="Its own fair-share cap; null: TENANT_MAX_RUNS_IN_FLIGHT"
    )
    run_retention_days: int | None = Field(
        default=None,
        description="Its own run retention in days (0: for ever); null: RUN_RETENTION_DAYS",
    )
    dead_letter_retention_days: int | None = Field(
        default=None,
        description="Its own dead-letter retention in days (0: for ever); null: "
        "DEAD_LETTER_RETENTION_DAYS",
    )
    plan: str | None = Field(default=None, description="Its plan's name; null: none")
    limit_overrides: dict[str, int | None] = Field(
        default_factory=dict, description="Its own values of its plan's limits"
    )

    @classmethod
    def of(cls, tenant: Tenant) -> TenantSummary:
        return cls.model_validate(tenant, from_attributes=True)


class Registered(BaseModel):
    user_id: uuid.UUID
    email: str
    tenant: TenantSummary
    role: Role
    email_verified: bool


class Me(BaseModel):
    kind: Literal["user", "api_key", "oauth_client"]
    user_id: uuid.UUID | None
    email: str | None
    api_key_id: uuid.UUID | None
    oauth_client_id: uuid.UUID | None
    tenant: TenantSummary
    role: Role | None
    scopes: list[str]
    is_superuser: bool


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret: shown this once, stored only as a hash")
