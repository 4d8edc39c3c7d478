"""Bodies of /oauth-clients and /oauth/token (the token endpoint's are RFC 6749's)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.auth.schemas import Scope


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)


class ClientOut(BaseModel):
    id: uuid.UUID
    name: str
    client_id: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ClientCreated(ClientOut):
    client_secret: str = Field(description="The secret: shown this once, stored only as a hash")


class AccessToken(BaseModel):
    """RFC 6749 §5.1."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the token type's name
    expires_in: int
    scope: str


class TokenError(BaseModel):
    """RFC 6749 §5.2; `slow_down` (RFC 8628's code for asking too often) with 429."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "slow_down",
    ]
    error_description: str
