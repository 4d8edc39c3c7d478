"""One-time links of a user (password reset, email verification) and the email that carries
them: a token whose secret only the link holds (derived by `security.link_token`, stored as a
digest), expiring, spent once by one conditional UPDATE."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth import security
from switchyard.db.models import DEFAULT_TENANT_ID, TokenPurpose, UserToken
from switchyard.errors import InvalidInputError
from switchyard.platform.outbox import Outbox
from switchyard.settings import Settings

# The task that sends account email (declared by the accounts domain); its payload names the
# token, never the link: the worker derives the link again.
EMAIL_TASK: Final = "accounts.send_email"
EmailKind = Literal["invitation", "password_reset", "verify_email"]
BAD_LINK = "This link is invalid, used or expired."


def bad_link() -> InvalidInputError:
    return InvalidInputError.on("body.token", BAD_LINK, message="invalid or expired", type="token")


def lifetime(settings: Settings, purpose: TokenPurpose) -> timedelta:
    if purpose is TokenPurpose.PASSWORD_RESET:
        return timedelta(minutes=settings.password_reset_ttl_minutes)
    return timedelta(hours=settings.email_verification_ttl_hours)


async def queue_email(
    session: AsyncSession,
    outbox: Outbox,
    kind: EmailKind,
    token_id: uuid.UUID,
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID,
) -> None:
    """A run of the email task, after the unit of work commits. Account email of a user runs
    in the platform's own tenant (not in a tenant whose members would see it); an
    invitation's, in the inviting tenant."""
    await outbox.submit(session, tenant_id, EMAIL_TASK, {"kind": kind, "token_id": str(token_id)})


async def issue(
    session: AsyncSession,
    settings: Settings,
    outbox: Outbox,
    user_id: uuid.UUID,
    purpose: TokenPurpose,
) -> UserToken:
    """A new token, and its email queued. Earlier unspent tokens of the purpose stop working."""
    row = await issue_token(session, settings, user_id, purpose, uuid.uuid4())
    await queue_email(session, outbox, purpose.value, row.id)
    return row


async def request_link(
    session: AsyncSession, outbox: Outbox, purpose: TokenPurpose, email: str
) -> None:
    """A link asked for an address (a password reset, another verification): one run of the
    email task whatever the address, which looks the account up and issues the token. Asking
    does the same work, in the same time, whether or not the address has an account."""
    payload = {"kind": purpose.value, "email": email.lower()}
    await outbox.submit(session, DEFAULT_TENANT_ID, EMAIL_TASK, payload)


async def issue_token(
    session: AsyncSession,
    settings: Settings,
    user_id: uuid.UUID,
    purpose: TokenPurpose,
    token_id: uuid.UUID,
) -> UserToken:
    """Token `token_id` of `user_id` (made now, unless it exists: a retried email task issues
    it once). Earlier unspent tokens of the purpose stop working."""
    existing = await session.get(UserToken, token_id)
    if existing is not None:
        return existing
    now = datetime.now(UTC)
    await session.execute(
        update(UserToken)
        .where(
            UserToken.user_id == user_id,
            UserToken.purpose == purpose,
            UserToken.used_at.is_(None),
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    token = security.link_token(settings, purpose.value, token_id)
    row = UserToken(
        id=token_id,
        user_id=user_id,
        purpose=purpose,
        secret_hash=security.link_digest(token),
        expires_at=now + lifetime(settings, purpose),
    )
    session.add(row)
    await session.flush()
    return row


async def spend(session: AsyncSession, token: str, purpose: TokenPurpose) -> UserToken:
    """The token's row, now spent; 422 on body.token when it is unknown, of another purpose,
    used or expired (one answer for all). Of two concurrent spends, one wins."""
    parts = security.split_link_token(token)
    stored = await session.get(UserToken, parts[0]) if parts else None
    if (
        parts is None
        or stored is None
        or stored.purpose is not purpose
        or not security.same_digest(parts[1], stored.secret_hash)
    ):
        raise bad_link()
    now = datetime.now(UTC)
    spent = await session.scalar(
        update(UserToken)
        .where(UserToken.id == stored.id, UserToken.used_at.is_(None), UserToken.expires_at > now)
        .values(used_at=now)
        .returning(UserToken.id)
        .execution_options(synchronize_session=False)
    )
    if spent is None:
        raise bad_link()
    return stored


async def pending(session: AsyncSession, token_id: uuid.UUID) -> UserToken | None:
    """The token if it can still be spent (for the email task: a superseded one is not sent)."""
    found: UserToken | None = await session.scalar(
        select(UserToken).where(
            UserToken.id == token_id,
            UserToken.used_at.is_(None),
            UserToken.expires_at > datetime.now(UTC),
        )
    )
    return found
