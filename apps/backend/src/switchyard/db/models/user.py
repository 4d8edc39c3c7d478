from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey, string_enum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class User(UUIDPrimaryKey, Timestamps, Base):
    """A person who signs in; belongs to tenants through memberships."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_superuser: Mapped[bool] = mapped_column(default=False, server_default="false")
    is_active: Mapped[bool] = mapped_column(default=True, server_default="true")
    # NULL until the address is confirmed (a link by email, or accepting an invitation sent
    # to it); REQUIRE_EMAIL_VERIFICATION decides whether an unconfirmed user may sign in.
    email_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# At most one owner per tenant, kept by the database (ownership moves by a transfer).
ONE_OWNER = "role = 'owner'"


class Membership(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("user_id", "tenant_id"),
        Index(
            "ix_memberships_one_owner",
            "tenant_id",
            unique=True,
            postgresql_where=text(ONE_OWNER),
        ),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[Role] = mapped_column(string_enum(Role, "membership_role"))
    # A deactivated member keeps the membership but cannot sign in to, or act in, the tenant.
    is_active: Mapped[bool] = mapped_column(default=True, server_default="true")


class RefreshToken(UUIDPrimaryKey, Timestamps, Base):
    """One refresh token of a rotation family; only a hash of its secret is kept."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_family_id", "family_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    family_id: Mapped[uuid.UUID]
    secret_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MachineCredential:
    """What a tenant's machine credential keeps: a name, a hash of the secret (never the
    secret), its scopes, who made it (it works only while they are an active member, and never
    with more than their role), its last use and its revocation."""

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(UUIDPrimaryKey, Timestamps, MachineCredential, Base):
    """An API key: found by its lookup prefix."""

    __tablename__ = "api_keys"

    prefix: Mapped[str] = mapped_column(String(16), unique=True)


class OAuthClient(UUIDPrimaryKey, Timestamps, MachineCredential, Base):
    """A client of the OAuth2 client-credentials grant: found by its public client id."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(40), unique=True)


class TokenPurpose(StrEnum):
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a purpose, not a password
    EMAIL_VERIFICATION = "verify_email"


class UserToken(UUIDPrimaryKey, Timestamps, Base):
    """A one-time link's token for a user (password reset, email verification): a hash of the
    secret, an expiry, spent once."""

    __tablename__ = "user_tokens"
    __table_args__ = (Index("ix_user_tokens_user_id_purpose", "user_id", "purpose"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[TokenPurpose] = mapped_column(string_enum(TokenPurpose, "token_purpose"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Invitation(UUIDPrimaryKey, Timestamps, Base):
    """An invitation of an email address into a tenant with a role: its link's token is kept
    as a hash; resending replaces it (the old link stops working)."""

    __tablename__ = "invitations"
    __table_args__ = (
        # One pending invitation per address and tenant.
        Index(
            "ix_invitations_pending_email",
            "tenant_id",
            "email",
            unique=True,
            postgresql_where=text("accepted_at IS NULL AND revoked_at IS NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[Role] = mapped_column(string_enum(Role, "invitation_role"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    # Part of what the link's secret is derived from: a new one on each resend.
    nonce: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    sent_count: Mapped[int] = mapped_column(default=1, server_default="1")
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    accepted_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
