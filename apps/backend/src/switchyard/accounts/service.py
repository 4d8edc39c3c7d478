"""Members (roles, deactivation, removal, one owner), invitations (one-time links into a
tenant), password reset and email verification. Every change is audited in its tenant."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.accounts.repository import InvitationRepository, MemberRepository
from switchyard.accounts.schemas import (
    InvitationAccept,
    InvitationIn,
    InvitationOut,
    Joined,
    MemberOut,
    MemberPatch,
)
from switchyard.auth import security, tokens
from switchyard.auth.principal import Principal
from switchyard.auth.schemas import TenantSummary
from switchyard.auth.service import check_password, revoke_refresh_tokens
from switchyard.db.models import (
    Invitation,
    Membership,
    Role,
    Tenant,
    TokenPurpose,
    User,
    UserToken,
)
from switchyard.errors import ConflictError, InvalidInputError
from switchyard.platform import audit
from switchyard.platform.outbox import Outbox
from switchyard.settings import Settings

OWNER_FIXED = "The owner's role changes only by a transfer of ownership (the owner can't leave)."
INVITATION = "invitation"


def member_out(membership: Membership, user: User) -> MemberOut:
    return MemberOut(
        user_id=user.id,
        email=user.email,
        role=membership.role,
        is_active=membership.is_active,
        email_verified=user.email_verified_at is not None,
        joined_at=membership.created_at,
    )


async def members(session: AsyncSession, tenant_id: uuid.UUID) -> list[MemberOut]:
    rows = await MemberRepository(session, tenant_id).with_users()
    return [member_out(membership, user) for membership, user in rows]


async def _member_view(session: AsyncSession, membership: Membership) -> MemberOut:
    await session.flush()
    await session.refresh(membership)
    return member_out(membership, await session.get_one(User, membership.user_id))


async def change(
    session: AsyncSession, admin: Principal, user_id: uuid.UUID, patch: MemberPatch
) -> MemberOut:
    """A member's role, or whether they are active; applies at their next request."""
    membership = await MemberRepository(session, admin.tenant_id).of_user_or_404(user_id, lock=True)
    if membership.role is Role.OWNER and (patch.role is not None or patch.is_active is not None):
        raise ConflictError(OWNER_FIXED)
    target = ("user", user_id)
    if patch.role is not None and Role(patch.role) is not membership.role:
        details = {"from": membership.role.value, "to": patch.role}
        membership.role = Role(patch.role)
        audit.record(session, admin.tenant_id, "member.role_changed", admin.actor, target, details)
    if patch.is_active is not None and patch.is_active != membership.is_active:
        membership.is_active = patch.is_active
        action = "member.reactivated" if patch.is_active else "member.deactivated"
        audit.record(session, admin.tenant_id, action, admin.actor, target)
        if not patch.is_active:
            await revoke_refresh_tokens(session, user_id, admin.tenant_id)
    return await _member_view(session, membership)


async def remove(session: AsyncSession, caller: Principal, user_id: uuid.UUID) -> None:
    """Remove a member (an admin), or leave (oneself): their next request is refused."""
    membership = await MemberRepository(session, caller.tenant_id).of_user_or_404(
        user_id, lock=True
    )
    if membership.role is Role.OWNER:
        raise ConflictError(OWNER_FIXED)
    await session.delete(membership)
    await revoke_refresh_tokens(session, user_id, caller.tenant_id)
    action = "member.left" if user_id == caller.user_id else "member.removed"
    audit.record(session, caller.tenant_id, action, caller.actor, ("user", user_id))


async def transfer_ownership(
    session: AsyncSession, owner: Principal, user_id: uuid.UUID
) -> list[MemberOut]:
    """The owner hands the tenant to an active member and becomes an admin: one owner at
    every moment (the tenant row is locked, and the database keeps one owner per tenant)."""
    assert owner.user_id is not None
    await session.execute(select(Tenant.id).where(Tenant.id == owner.tenant_id).with_for_update())
    repository = MemberRepository(session, owner.tenant_id)
    successor = await repository.of_user_or_404(user_id, lock=True)
    if user_id == owner.user_id:
        raise InvalidInputError.on(
            "body.user_id", "You own the tenant already.", message="another member", type="self"
        )
    if not successor.is_active:
        raise ConflictError("A deactivated member can't become the owner; reactivate them first.")
    current = await repository.of_user_or_404(owner.user_id, lock=True)
    current.role = Role.ADMIN
    await session.flush()  # the old owner steps down before the new one steps up
    successor.role = Role.OWNER
    await session.flush()
    audit.record(
        session,
        owner.tenant_id,
        "tenant.ownership_transferred",
        owner.actor,
        ("user", user_id),
        {"previous_owner": str(owner.user_id)},
    )
    return [await _member_view(session, current), await _member_view(session, successor)]


# Invitations


def invitation_out(invitation: Invitation) -> InvitationOut:
    if invitation.accepted_at is not None:
        status = "accepted"
    elif invitation.revoked_at is not None:
        status = "revoked"
    elif invitation.expires_at <= datetime.now(UTC):
        status = "expired"
    else:
        status = "pending"
    return InvitationOut(
        id=invitation.id,
        email=invitation.email,
        role=invitation.role,
        status=status,
        expires_at=invitation.expires_at,
        sent_count=invitation.sent_count,
        invited_by=invitation.invited_by,
        created_at=invitation.created_at,
        accepted_at=invitation.accepted_at,
        revoked_at=invitation.revoked_at,
    )


def _new_link(settings: Settings, invitation: Invitation) -> None:
    """A fresh secret (a new nonce) and expiry: an earlier link of it stops working."""
    invitation.nonce = secrets.token_hex(16)
    token = security.link_token(settings, INVITATION, invitation.id, invitation.nonce)
    invitation.secret_hash = security.link_digest(token)
    invitation.expires_at = datetime.now(UTC) + timedelta(hours=settings.invitation_ttl_hours)


async def invite(
    session: AsyncSession,
    settings: Settings,
    outbox: Outbox,
    admin: Principal,
    body: InvitationIn,
) -> Invitation:
    """An invitation of `body.email` with a role, emailed. Whether the address has an account
    is never part of the answer (a member of this tenant already is a 409: the admin sees the
    members anyway)."""
    email = body.email.lower()
    repository = InvitationRepository(session, admin.tenant_id)
    if await MemberRepository(session, admin.tenant_id).of_email(email) is not None:
        raise ConflictError("This address belongs to a member of the tenant already.")
    earlier = await repository.open_for(email)
    if earlier is not None:
        if earlier.expires_at > datetime.now(UTC):
            raise ConflictError(
                "An invitation to this address is pending; resend it or revoke it first."
            )
        earlier.revoked_at = datetime.now(UTC)  # an expired one makes way
        await session.flush()
    invitation = Invitation(
        id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        email=email,
        role=Role(body.role),
        invited_by=admin.user_id,
        sent_count=1,
    )
    _new_link(settings, invitation)
    try:
        async with session.begin_nested():
            session.add(invitation)
    except IntegrityError:  # a concurrent invitation of the address won
        raise ConflictError("An invitation to this address is pending.") from None
    await session.refresh(invitation)
    await tokens.queue_email(session, outbox, "invitation", invitation.id, admin.tenant_id)
    audit.record(
        session,
        admin.tenant_id,
        "invitation.sent",
        admin.actor,
        (INVITATION, invitation.id),
        {"email": email, "role": body.role},
    )
    return invitation


async def _open_invitation(
    session: AsyncSession, tenant_id: uuid.UUID, invitation_id: uuid.UUID
) -> Invitation:
    invitation = await InvitationRepository(session, tenant_id).get_or_404(invitation_id)
    if invitation.accepted_at is not None or invitation.revoked_at is not None:
        raise ConflictError("This invitation was accepted or revoked already.")
    return invitation


async def resend(
    session: AsyncSession,
    settings: Settings,
    outbox: Outbox,
    admin: Principal,
    invitation_id: uuid.UUID,
) -> Invitation:
    invitation = await _open_invitation(session, admin.tenant_id, invitation_id)
    _new_link(settings, invitation)
    invitation.sent_count += 1
    await session.flush()
    await session.refresh(invitation)
    await tokens.queue_email(session, outbox, "invitation", invitation.id, admin.tenant_id)
    audit.record(
        session, admin.tenant_id, "invitation.resent", admin.actor, (INVITATION, invitation.id)
    )
    return invitation


async def revoke(session: AsyncSession, admin: Principal, invitation_id: uuid.UUID) -> Invitation:
    invitation = await _open_invitation(session, admin.tenant_id, invitation_id)
    invitation.revoked_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(invitation)
    audit.record(
        session, admin.tenant_id, "invitation.revoked", admin.actor, (INVITATION, invitation.id)
    )
    return invitation


async def accept(session: AsyncSession, settings: Settings, body: InvitationAccept) -> Joined:
    """Join the tenant with the invited role: a new account (with `password`) or the existing
    one of the address. The link works once, until it expires; a resend or a revoke ends it."""
    parts = security.split_link_token(body.token)
    invitation = await InvitationRepository.by_token_id(session, parts[0]) if parts else None
    if (
        parts is None
        or invitation is None
        or not security.same_digest(parts[1], invitation.secret_hash)
        or invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= datetime.now(UTC)
    ):
        raise tokens.bad_link()
    user = await session.scalar(select(User).where(User.email == invitation.email))
    created = user is None
    now = datetime.now(UTC)
    if user is None:
        if body.password is None:
            raise InvalidInputError.on(
                "body.password",
                "Choose a password for the new account.",
                message="required for a new account",
                type="missing",
            )
        check_password(settings, body.password)
        user = User(
            email=invitation.email,
            password_hash=security.hash_password(body.password),
            email_verified_at=now,  # the link came to this address
        )
        session.add(user)
        await session.flush()
    elif body.password is not None:
        raise InvalidInputError.on(
            "body.password",
            "This address has an account: accept without a password, then sign in with it.",
            message="not allowed for an existing account",
            type="extra_forbidden",
        )
    elif user.email_verified_at is None:
        user.email_verified_at = now
    members = MemberRepository(session, invitation.tenant_id)
    if await members.of_user(user.id) is not None:
        raise ConflictError("This account is a member of the tenant already.")
    session.add(Membership(user_id=user.id, tenant_id=invitation.tenant_id, role=invitation.role))
    await session.execute(
        update(Invitation)
        .where(Invitation.id == invitation.id)
        .values(accepted_at=now, accepted_by=user.id)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    audit.record(
        session,
        invitation.tenant_id,
        "invitation.accepted",
        f"user:{user.id}",
        (INVITATION, invitation.id),
        {"role": invitation.role.value, "account_created": created},
    )
    tenant = await session.get_one(Tenant, invitation.tenant_id)
    return Joined(
        user_id=user.id,
        email=user.email,
        tenant=TenantSummary.of(tenant),
        role=invitation.role,
        account_created=created,
    )


# Password reset and email verification


async def _active_user(session: AsyncSession, email: str) -> User | None:
    found: User | None = await session.scalar(
        select(User).where(User.email == email.lower(), User.is_active.is_(True))
    )
    return found


async def request_reset(session: AsyncSession, outbox: Outbox, email: str) -> None:
    """A reset link emailed if the address has an active account; nothing otherwise. The
    email task looks the account up: asking takes the same time either way."""
    await tokens.request_link(session, outbox, TokenPurpose.PASSWORD_RESET, email)


async def _tenants_of(session: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.scalars(select(Membership.tenant_id).where(Membership.user_id == user_id))
    return list(rows)


async def reset_password(
    session: AsyncSession, settings: Settings, token: str, password: str
) -> None:
    """Set the new password; every sign-in of the user ends (refresh tokens revoked)."""
    check_password(settings, password)
    spent = await tokens.spend(session, token, TokenPurpose.PASSWORD_RESET)
    user = await session.get_one(User, spent.user_id)
    user.password_hash = security.hash_password(password)
    if user.email_verified_at is None:
        user.email_verified_at = datetime.now(UTC)  # the link came to this address
    await revoke_refresh_tokens(session, user.id)
    for tenant_id in await _tenants_of(session, user.id):
        audit.record(
            session, tenant_id, "auth.password_reset", f"user:{user.id}", ("user", user.id)
        )


async def request_verification(session: AsyncSession, outbox: Outbox, email: str) -> None:
    """Another confirmation link if the address has an unconfirmed account; as `request_reset`,
    the email task looks it up."""
    await tokens.request_link(session, outbox, TokenPurpose.EMAIL_VERIFICATION, email)


async def link_for_address(
    session: AsyncSession,
    settings: Settings,
    purpose: TokenPurpose,
    email: str,
    token_id: uuid.UUID,
) -> UserToken | None:
    """For the email task: the token of a link asked for `email` (id `token_id`, issued once),
    or None when the address has no active account (or, for a verification, a confirmed one)."""
    user = await _active_user(session, email)
    if user is None:
        return None
    if purpose is TokenPurpose.EMAIL_VERIFICATION and user.email_verified_at is not None:
        return None
    return await tokens.issue_token(session, settings, user.id, purpose, token_id)


async def verify_email(session: AsyncSession, token: str) -> None:
    spent = await tokens.spend(session, token, TokenPurpose.EMAIL_VERIFICATION)
    user = await session.get_one(User, spent.user_id)
    if user.email_verified_at is None:
        user.email_verified_at = datetime.now(UTC)
        for tenant_id in await _tenants_of(session, user.id):
            audit.record(
                session, tenant_id, "auth.email_verified", f"user:{user.id}", ("user", user.id)
            )
