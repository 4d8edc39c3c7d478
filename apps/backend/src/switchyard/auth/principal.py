"""Who is calling: a user with a role in a tenant, or a tenant's API key with scopes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from switchyard.db.models import Role


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "api_key"]
    tenant_id: uuid.UUID
    scopes: frozenset[str]
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    role: Role | None = None
    is_superuser: bool = False

    @property
    def rate_limit_key(self) -> str:
        return f"key:{self.api_key_id}" if self.kind == "api_key" else f"user:{self.user_id}"

    @property
    def actor(self) -> str:
        """Who did it, as recorded (`submitted_by` of a run): `user:<id>` or `api_key:<id>`."""
        return f"api_key:{self.api_key_id}" if self.kind == "api_key" else f"user:{self.user_id}"
