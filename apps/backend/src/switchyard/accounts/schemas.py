"""Bodies of /members, /invitations, and the account links of /auth."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from switchyard.auth.schemas import TenantSummary
from switchyard.db.models import Role

# Roles given by an invitation or a change; the owner's moves only by a transfer.
GivenRole = Literal["admin", "member"]
LinkToken = Field(min_length=1, max_length=200, description="The token of the emailed link")


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Role
    is_active: bool
    email_verified: bool
    joined_at: datetime


class MemberPage(BaseModel):
    items: list[MemberOut]


class MemberPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: GivenRole | None = None
    is_active: bool | None = Field(
        default=None, description="false: deactivated (cannot sign in or act in this tenant)"
    )


class OwnershipTransfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: uuid.UUID = Field(description="An active member, who becomes the owner")


class InvitationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    role: GivenRole = "member"


class InvitationOut(BaseModel):
    id: uuid.UUID
    email: str
    role: Role
    status: Literal["pending", "expired", "accepted", "revoked"]
    expires_at: datetime
    sent_count: int
    invited_by: uuid.UUID | None
    created_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


class InvitationPage(BaseModel):
    items: list[InvitationOut]
    next_cursor: str | None


class InvitationAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = LinkToken
    password: str | None = Field(
        default=None,
        max_length=1024,
        description="Only when the address has no account yet: the new account's password",
    )


class Joined(BaseModel):
    user_id: uuid.UUID
    email: str
    tenant: TenantSummary
    role: Role
    account_created: bool


class EmailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = LinkToken


class PasswordResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = LinkToken
    password: str = Field(max_length=1024)


class EmailQueued(BaseModel):
    detail: str = Field(description="The same answer whether or not the address has an account")
