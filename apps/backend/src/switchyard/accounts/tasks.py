"""accounts.send_email: the email of an invitation, a password reset or an email verification.

Its payload names the token only; the link is derived here again (`security.link_token`), so
no secret is ever in a run's payload, result or log line (outside development without SMTP,
where the log is the mailbox). A token spent, superseded or revoked before the run is not
sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Literal

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.accounts.service import link_for_address
from switchyard.auth import security, tokens
from switchyard.db.models import Invitation, Tenant, TokenPurpose, User
from switchyard.platform.registry import RetryPolicy, TaskContext, task
from switchyard.services import email
from switchyard.settings import Settings


class SendEmailInput(BaseModel):
    """The email of token `token_id`; or, for a link asked for an address (`email`), the
    email of a token issued here when the address has an account (the run's id is the token's,
    so a retry issues it once)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["invitation", "password_reset", "verify_email"]
    token_id: uuid.UUID | None = None
    email: str | None = Field(default=None, max_length=320)

    @model_validator(mode="after")
    def _one_of(self) -> SendEmailInput:
        if (self.token_id is None) == (self.email is None):
            raise ValueError("give token_id or email, not both")
        if self.email is not None and self.kind == "invitation":
            raise ValueError("an invitation is sent by its token_id")
        return self


PAGES = {
    "invitation": "accept-invitation",
    "password_reset": "reset-password",
    "verify_email": "verify-email",
}


def link(settings: Settings, kind: str, token: str) -> str:
    return f"{settings.account_link_base}/{PAGES[kind]}?token={token}"


async def _invitation(
    session: AsyncSession, settings: Settings, token_id: uuid.UUID
) -> EmailMessage | None:
    invitation = await session.scalar(
        select(Invitation).where(
            Invitation.id == token_id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > datetime.now(UTC),
        )
    )
    if invitation is None:
        return None
    tenant = await session.get_one(Tenant, invitation.tenant_id)
    inviter = await session.get(User, invitation.invited_by) if invitation.invited_by else None
    token = security.link_token(settings, "invitation", invitation.id, invitation.nonce)
    who = inviter.email if inviter is not None else "An administrator"
    text = (
        f"{who} invited you to join {tenant.name} on {settings.app_name} as "
        f"{invitation.role.value}.\n\n"
        f"Accept the invitation: {link(settings, 'invitation', token)}\n\n"
        f"The link works once and expires at {invitation.expires_at:%Y-%m-%d %H:%M} UTC. "
        "If you did not expect it, ignore this email.\n"
    )
    subject = f"You are invited to {tenant.name} on {settings.app_name}"
    return email.message(settings, invitation.email, subject, text, "invitation")


async def _user_link(
    session: AsyncSession, settings: Settings, kind: str, token_id: uuid.UUID
) -> EmailMessage | None:
    row = await tokens.pending(session, token_id)
    if row is None or row.purpose.value != kind:
        return None
    user = await session.get_one(User, row.user_id)
    token = security.link_token(settings, kind, row.id)
    url = link(settings, kind, token)
    until = f"{row.expires_at:%Y-%m-%d %H:%M} UTC"
    if kind == "password_reset":
        subject = f"Reset your {settings.app_name} password"
        text = (
            f"Someone asked to reset the password of {user.email}.\n\n"
            f"Choose a new password: {url}\n\n"
            f"The link works once and expires at {until}. If it was not you, ignore this "
            "email: your password stays as it is.\n"
        )
    else:
        subject = f"Confirm your email address for {settings.app_name}"
        text = (
            f"Confirm that {user.email} is yours: {url}\n\n"
            f"The link works once and expires at {until}.\n"
        )
    return email.message(settings, user.email, subject, text, kind)


@task(
    tokens.EMAIL_TASK,
    input=SendEmailInput,
    description="Send an account email (invitation, password reset, email verification)",
    # An unreachable or refusing SMTP server is retried; an email not configured is not.
    retry=RetryPolicy(
        max_retries=5,
        backoff_seconds=5,
        backoff_max_seconds=300,
        retry_on=(aiosmtplib.SMTPException, OSError, TimeoutError),
    ),
    soft_time_limit=60,
    time_limit=90,
    access="internal",  # started by the account routes, never over REST
)
async def send_email(payload: SendEmailInput, ctx: TaskContext) -> dict[str, object]:
    services = ctx.services
    settings = services.settings
    mailer = services.require_mailer()
    token_id = payload.token_id
    if payload.email is not None:  # asked for an address: its account, if any, gets a token
        async with services.database_sessions() as session, session.begin():
            purpose = TokenPurpose(payload.kind)
            row = await link_for_address(session, settings, purpose, payload.email, ctx.run_id)
        if row is None:
            ctx.logger.info("account email not sent: no such account", extra={"kind": payload.kind})
            return {"sent": False, "kind": payload.kind, "reason": "no account"}
        token_id = row.id
    assert token_id is not None
    async with services.database_sessions() as session:
        if payload.kind == "invitation":
            message = await _invitation(session, settings, token_id)
        else:
            message = await _user_link(session, settings, payload.kind, token_id)
    if message is None:
        ctx.logger.info("account email not sent: its link is no longer valid")
        return {"sent": False, "kind": payload.kind, "reason": "no longer valid"}
    await mailer.send(message)
    ctx.logger.info("account email sent", extra={"kind": payload.kind})
    return {"sent": True, "kind": payload.kind}
