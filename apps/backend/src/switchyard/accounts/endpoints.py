"""/members, /invitations, and the account links of /auth (password reset, email
verification). Answers about an address never say whether it has an account."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status

from switchyard.accounts import service
from switchyard.accounts.repository import InvitationRepository
from switchyard.accounts.schemas import (
    EmailIn,
    EmailQueued,
    InvitationAccept,
    InvitationIn,
    InvitationOut,
    InvitationPage,
    Joined,
    LinkIn,
    MemberOut,
    MemberPage,
    MemberPatch,
    OwnershipTransfer,
    PasswordResetIn,
)
from switchyard.auth.dependencies import (
    OwnerDep,
    TenantAdminDep,
    UserDep,
    client_address,
    limit_by_client_ip,
)
from switchyard.errors import NotFoundError
from switchyard.platform.dependencies import (
    OutboxDep,
    RateLimiterDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)
from switchyard.platform.outbox import Outbox

members_router = APIRouter(prefix="/members", tags=["members"])
invitations_router = APIRouter(prefix="/invitations", tags=["members"])
router = APIRouter(prefix="/auth", tags=["auth"])
# Development only, so not in the API's document.
mailbox_router = APIRouter(prefix="/dev-mailbox", tags=["auth"], include_in_schema=False)
LIMITED = [Depends(limit_by_client_ip)]


async def email_outbox(services: ServicesDep, outbox: OutboxDep) -> Outbox:
    """The outbox of a route that emails: 503 naming SMTP_HOST without a mailer, or
    CELERY_BROKER_URL without a broker, before anything is written."""
    services.require_mailer()
    outbox.require()
    return outbox


EmailOutboxDep = Annotated[Outbox, Depends(email_outbox)]
QUEUED = EmailQueued(detail="If the address has an account, an email is on its way.")


@members_router.get("")
async def list_members(admin: TenantAdminDep, session: SessionDep) -> MemberPage:
    """Every member of the tenant, oldest first (owners and admins)."""
    return MemberPage(items=await service.members(session, admin.tenant_id))


@members_router.post("/transfer-ownership")
async def transfer_ownership(
    body: OwnershipTransfer, owner: OwnerDep, session: SessionDep
) -> list[MemberOut]:
    """The owner makes an active member the owner and becomes an admin."""
    return await service.transfer_ownership(session, owner, body.user_id)


@members_router.delete("/me", status_code=status.HTTP_204_NO_CONTENT)
async def leave_tenant(user: UserDep, session: SessionDep) -> None:
    """Leave the tenant (not its owner: transfer ownership first)."""
    assert user.user_id is not None
    await service.remove(session, user, user.user_id)


@members_router.patch("/{user_id}")
async def change_member(
    user_id: uuid.UUID, body: MemberPatch, admin: TenantAdminDep, session: SessionDep
) -> MemberOut:
    """Change a member's role (admin or member) or deactivate them; applies at their next
    request."""
    return await service.change(session, admin, user_id, body)


@members_router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(user_id: uuid.UUID, admin: TenantAdminDep, session: SessionDep) -> None:
    """Remove a member: their next request is refused; their sign-ins here end."""
    await service.remove(session, admin, user_id)


@invitations_router.post("", status_code=status.HTTP_201_CREATED)
async def invite(
    body: InvitationIn,
    admin: TenantAdminDep,
    session: SessionDep,
    settings: SettingsDep,
    outbox: EmailOutboxDep,
) -> InvitationOut:
    """Invite an address with a role: a one-time link is emailed (valid INVITATION_TTL_HOURS)."""
    invitation = await service.invite(session, settings, outbox, admin, body)
    return service.invitation_out(invitation)


@invitations_router.get("")
async def list_invitations(
    admin: TenantAdminDep,
    session: SessionDep,
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=200),
) -> InvitationPage:
    """The tenant's invitations, newest first, with their status."""
    repository = InvitationRepository(session, admin.tenant_id)
    rows, next_cursor = await repository.page(repository.select(), cursor, limit)
    return InvitationPage(
        items=[service.invitation_out(row) for row in rows], next_cursor=next_cursor
    )


@invitations_router.post("/accept", dependencies=LIMITED)
async def accept_invitation(
    body: InvitationAccept, session: SessionDep, settings: SettingsDep
) -> Joined:
    """Join with the token of the emailed link: a new account (give `password`), or the
    address's existing one (no password; sign in with it as before)."""
    return await service.accept(session, settings, body)


@invitations_router.post("/{invitation_id}/resend")
async def resend_invitation(
    invitation_id: uuid.UUID,
    admin: TenantAdminDep,
    session: SessionDep,
    settings: SettingsDep,
    services: ServicesDep,
    outbox: OutboxDep,
) -> InvitationOut:
    """Email a new link (the earlier one stops working) with a new expiry."""
    await InvitationRepository(session, admin.tenant_id).get_or_404(invitation_id)
    await email_outbox(services, outbox)  # after the 404: another tenant's id says nothing
    invitation = await service.resend(session, settings, outbox, admin, invitation_id)
    return service.invitation_out(invitation)


@invitations_router.delete("/{invitation_id}")
async def revoke_invitation(
    invitation_id: uuid.UUID, admin: TenantAdminDep, session: SessionDep
) -> InvitationOut:
    return service.invitation_out(await service.revoke(session, admin, invitation_id))


async def _limit_address(email: str, settings: SettingsDep, limiter: RateLimiterDep) -> None:
    await limiter.enforce(settings.rate_limit_account_email, "account_email", email.lower())


@router.post("/password-reset", status_code=status.HTTP_202_ACCEPTED, dependencies=LIMITED)
async def request_password_reset(
    body: EmailIn,
    session: SessionDep,
    settings: SettingsDep,
    outbox: EmailOutboxDep,
    limiter: RateLimiterDep,
) -> EmailQueued:
    """Email a reset link (valid PASSWORD_RESET_TTL_MINUTES). The same answer whether or not
    the address has an account; limited per client address and per email address."""
    await _limit_address(body.email, settings, limiter)
    await service.request_reset(session, outbox, body.email)
    return QUEUED


@router.post(
    "/password-reset/confirm", status_code=status.HTTP_204_NO_CONTENT, dependencies=LIMITED
)
async def reset_password(body: PasswordResetIn, session: SessionDep, settings: SettingsDep) -> None:
    """Set a new password with the link's token; every sign-in of the account ends."""
    await service.reset_password(session, settings, body.token, body.password)


@router.post("/verify-email", status_code=status.HTTP_204_NO_CONTENT, dependencies=LIMITED)
async def verify_email(body: LinkIn, session: SessionDep) -> None:
    """Confirm the address with the token of the link emailed at sign-up."""
    await service.verify_email(session, body.token)


@router.post("/verify-email/resend", status_code=status.HTTP_202_ACCEPTED, dependencies=LIMITED)
async def resend_verification(
    body: EmailIn,
    session: SessionDep,
    settings: SettingsDep,
    outbox: EmailOutboxDep,
    limiter: RateLimiterDep,
) -> EmailQueued:
    """Email another confirmation link to an unconfirmed account; the same answer otherwise."""
    await _limit_address(body.email, settings, limiter)
    await service.request_verification(session, outbox, body.email)
    return QUEUED


NO_MAILBOX = (
    "No development mailbox here: it exists in development without SMTP_HOST (standalone), "
    "for callers on this machine (a loopback address) only."
)
MAILBOX_POLL_SECONDS = 0.1


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@mailbox_router.get("")
async def read_mailbox(
    request: Request,
    services: ServicesDep,
    to: Annotated[str | None, Query(max_length=320)] = None,
    kind: Annotated[str | None, Query(pattern="^(invitation|password_reset|verify_email)$")] = None,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> dict[str, list[dict[str, Any]]]:
    """The account email development wrote instead of sending, newest first (the last 100, a
    week at most), optionally only those to `to` and of `kind`; with `wait`, up to that many
    seconds for one to arrive (the email task runs in the worker, a moment after the request
    that asked for it). Each has its links and the first link's `token`. Loopback callers
    only: the messages hold every tenant's links."""
    mailbox = services.mailbox
    if mailbox is None or not _loopback(client_address(request)):
        raise NotFoundError(NO_MAILBOX)
    deadline = time.monotonic() + wait
    address = to.lower() if to is not None else None
    while True:
        found = [
            entry
            for entry in await mailbox.messages()
            if (address is None or str(entry["to"]).lower() == address)
            and (kind is None or entry["kind"] == kind)
        ]
        if found or time.monotonic() >= deadline:
            return {"items": found}
        await asyncio.sleep(MAILBOX_POLL_SECONDS)
