"""Who is calling: a user with a role in a tenant, or a tenant's machine (an API key, or an
OAuth client's access token) with scopes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from switchyard.db.models import Role
from switchyard.services.quotas import Limits

PrincipalKind = Literal["user", "api_key", "oauth_client"]


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    tenant_id: uuid.UUID
    scopes: frozenset[str]
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    role: Role | None = None
    is_superuser: bool = False
    oauth_client_id: uuid.UUID | None = None
    # Set when the caller is a console session (its cookie): the sign-in the CSRF token of its
    # state-changing requests is derived from.
    console_family: uuid.UUID | None = None
    # Its tenant's plan limits, read with the principal (a change applies at the next
    # request); None: no plan and no limits of its own.
    limits: Limits | None = None

    def plan_rate_limit(self, name: str) -> str | None:
        """The plan's per-minute limit `name` (`api_requests_per_minute`,
        `task_runs_per_minute`) in the `limits` library's notation; None without one."""
        value = self.limits.of(name) if self.limits is not None else None
        return f"{value}/minute" if value else None

    def runs_rate_limit(self, default: str) -> str:
        """The tenant's limit of runs submitted: its plan's task_runs_per_minute, else
        `default` (RATE_LIMIT_TASK_RUNS)."""
        return self.plan_rate_limit("task_runs_per_minute") or default

    @property
    def rate_limit_key(self) -> str:
        return self.actor

    @property
    def actor(self) -> str:
        """Who did it, as recorded (`submitted_by` of a run, an audit event's actor):
        `user:<id>`, `api_key:<id>` or `oauth_client:<id>`."""
        if self.kind == "api_key":
            return f"api_key:{self.api_key_id}"
        if self.kind == "oauth_client":
            return f"oauth_client:{self.oauth_client_id}"
        return f"user:{self.user_id}"
