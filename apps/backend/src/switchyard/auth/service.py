"""Sign-up, sign-in, token rotation, API keys, and resolving a caller to a Principal."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, exists, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from switchyard.auth import security, tokens
from switchyard.auth.principal import Principal
from switchyard.auth.repository import ApiKeyRepository
from switchyard.auth.schemas import ApiKeyIn, LoginIn, RegisterIn, TokenPair
from switchyard.auth.scopes import ROLE_SCOPES
from switchyard.db.models import (
    DEFAULT_TENANT_ID,
    ApiKey,
    Membership,
    OAuthClient,
    RefreshToken,
    Role,
    Tenant,
    TenantStatus,
    TokenPurpose,
    User,
)
from switchyard.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    TokenReuseError,
    UnauthorizedError,
)
from switchyard.platform import audit
from switchyard.platform.outbox import Outbox
from switchyard.services.quotas import Limits, limits_from, with_limits
from switchyard.services.ratelimit import RateLimiter
from switchyard.settings import Settings

BAD_CREDENTIALS = "Incorrect email or password."
BAD_TOKEN = "The credentials are invalid or expired."  # noqa: S105 - a message
LAST_USED_GRANULARITY = timedelta(minutes=1)
EMAIL_TAKEN = "An account with this email exists; sign in instead."


def refuse_inactive(status: TenantStatus) -> None:
    """403 for a suspended tenant, or one being deleted."""
    if status is TenantStatus.SUSPENDED:
        raise ForbiddenError("This tenant is suspended.")
    if status is not TenantStatus.ACTIVE:
        raise ForbiddenError("This tenant is being deleted.")


def check_password(settings: Settings, password: str) -> None:
    low, high = settings.password_min_length, settings.password_max_length
    if not low <= len(password) <= high:
        raise InvalidInputError.on(
            "body.password",
            "The password does not meet the length rule.",
            message=f"between {low} and {high} characters",
            type="password_length",
        )


async def _free_slug(session: AsyncSession, name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50] or "tenant"
    slug = base
    while await session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


SLUG_ATTEMPTS = 3


async def create_tenant(session: AsyncSession, name: str, slug: str | None = None) -> Tenant:
    """A tenant with `slug`, or a free one made from its name (taken between the check and the
    insert by a concurrent sign-up: another one is tried)."""
    if slug is not None and await session.scalar(select(Tenant.id).where(Tenant.slug == slug)):
        raise ConflictError(f"The tenant slug {slug!r} is taken.")
    for attempt in range(SLUG_ATTEMPTS):
        tenant = Tenant(name=name, slug=slug or await _free_slug(session, name))
        try:
            async with session.begin_nested():
                session.add(tenant)
        except IntegrityError:
            if slug is not None or attempt == SLUG_ATTEMPTS - 1:
                raise ConflictError("The tenant slug is taken; try again.") from None
            continue
        break
    await session.refresh(tenant)
    return tenant


async def register(
    session: AsyncSession, settings: Settings, outbox: Outbox, body: RegisterIn
) -> tuple[User, Tenant]:
    """A new user and the tenant they own; a verification link is emailed when email can be
    sent at all (SMTP_HOST, or the log in development, and a broker); otherwise the user asks
    for one later (POST /auth/verify-email/resend)."""
    check_password(settings, body.password)
    email = body.email.lower()
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise ConflictError(EMAIL_TAKEN)
    tenant = await create_tenant(session, body.tenant_name)
    user = User(email=email, password_hash=security.hash_password(body.password))
    try:
        async with session.begin_nested():  # a concurrent sign-up with this email won
            session.add(user)
    except IntegrityError:
        raise ConflictError(EMAIL_TAKEN) from None
    session.add(Membership(user_id=user.id, tenant_id=tenant.id, role=Role.OWNER))
    await session.flush()
    if (settings.smtp_host is not None or settings.email_logged) and outbox.ready:
        await tokens.issue(session, settings, outbox, user.id, TokenPurpose.EMAIL_VERIFICATION)
    return user, tenant


async def ensure_superuser(session: AsyncSession, settings: Settings) -> User | None:
    """Create the platform superuser named in settings, once (two `migrate`s may race here);
    it owns the system tenant."""
    if not settings.first_superuser_email or settings.first_superuser_password is None:
        return None
    email = settings.first_superuser_email.lower()
    password = settings.first_superuser_password.get_secret_value()
    await session.execute(
        insert(User)
        .values(
            email=email,
            password_hash=security.hash_password(password),
            is_superuser=True,
            email_verified_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["email"])
    )
    user = await session.scalar(select(User).where(User.email == email))
    system = await session.scalar(select(Tenant).where(Tenant.slug == "default"))
    if user is not None and system is not None:
        # The system tenant's owner, unless an earlier superuser owns it (one owner each).
        owned = await session.scalar(
            select(Membership.id).where(
                Membership.tenant_id == system.id, Membership.role == Role.OWNER
            )
        )
        await session.execute(
            insert(Membership)
            .values(
                user_id=user.id,
                tenant_id=system.id,
                role=Role.ADMIN if owned is not None else Role.OWNER,
            )
            .on_conflict_do_nothing(index_elements=["user_id", "tenant_id"])
        )
    return user


NO_ONE = uuid.UUID(int=0)  # the id an unknown email is looked up with: no row has it


class SignInFailedError(UnauthorizedError):
    """A refused sign-in; `user_id`, `tenant_id`: whose account it was, when the email is one
    (the failure is audited in that tenant)."""

    def __init__(self, user_id: uuid.UUID | None = None, tenant_id: uuid.UUID | None = None):
        super().__init__(BAD_CREDENTIALS)
        self.user_id = user_id
        self.tenant_id = tenant_id


async def authenticate(
    session: AsyncSession,
    settings: Settings,
    email: str,
    password: str,
    tenant_slug: str | None,
) -> tuple[User, Membership]:
    """The same answer, in about the same time, whether or not the email exists. The tenant:
    the one named (`tenant`, its slug), or the user's only one; a user of several who names
    none is asked to (422 on body.tenant, listing their slugs: they gave the right password)."""
    user = await session.scalar(select(User).where(User.email == email.lower()))
    valid = security.verify_password(password, user.password_hash if user else None)
    # Asked for an unknown email too (it finds nothing): the same statements either way.
    rows = (
        await session.execute(
            select(Membership, Tenant.slug)
            .join(Tenant, Tenant.id == Membership.tenant_id)
            .where(
                Membership.user_id == (user.id if user else NO_ONE),
                Membership.is_active.is_(True),
            )
            .order_by(Membership.created_at)
        )
    ).all()
    chosen = [row for row in rows if tenant_slug is None or row.slug == tenant_slug]
    audited_in = (chosen or rows)[0][0].tenant_id if rows else None
    if user is None or not valid or not user.is_active or not chosen:
        raise SignInFailedError(user.id if user else None, audited_in)
    if len(chosen) > 1:
        raise InvalidInputError.on(
            "body.tenant",
            "This account belongs to several tenants; name one (its slug) to sign in to.",
            message="one of " + ", ".join(row.slug for row in chosen),
            type="tenant_required",
        )
    if settings.require_email_verification and user.email_verified_at is None:
        raise ForbiddenError(
            "Confirm your email address first: follow the link emailed at sign-up "
            "(POST /api/v1/auth/verify-email/resend sends another)."
        )
    membership = chosen[0][0]
    await _active_tenant(session, membership.tenant_id)
    return user, membership


async def sign_in(
    session: AsyncSession,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    limiter: RateLimiter,
    body: LoginIn,
) -> tuple[User, Membership]:
    """`authenticate`, with failed sign-ins counted per account (so no choice of client
    address buys more guesses; once used up, even the right password waits for the window to
    end) and audited in the account's tenant (apart: the request fails), and success audited."""
    account = ("login_failures", body.email.lower())
    await limiter.enforce(settings.rate_limit_login_failures, *account, count=False)
    try:
        user, membership = await authenticate(
            session, settings, body.email, body.password, body.tenant
        )
    except SignInFailedError as failed:
        await limiter.hit(settings.rate_limit_login_failures, *account)
        # Audited whether or not the email has an account (the same work either way): in the
        # account's tenant, or else in the platform's, where a superuser sees guessing.
        tenant_id = failed.tenant_id or DEFAULT_TENANT_ID
        target = ("user", failed.user_id) if failed.user_id else ("email", body.email.lower()[:200])
        await audit.record_apart(
            sessions, tenant_id, "auth.sign_in_failed", audit.ANONYMOUS, target
        )
        raise
    audit.record(
        session, membership.tenant_id, "auth.sign_in", f"user:{user.id}", ("user", user.id)
    )
    return user, membership


async def _active_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise UnauthorizedError(BAD_TOKEN)
    refuse_inactive(tenant.status)
    return tenant


async def _active_tenant_limits(session: AsyncSession, tenant_id: uuid.UUID) -> Limits | None:
    """`_active_tenant`'s checks, and the tenant's limits, in one read."""
    statement = with_limits(select(Tenant.status).where(Tenant.id == tenant_id))
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        raise UnauthorizedError(BAD_TOKEN)
    refuse_inactive(row.status)
    return limits_from(row)


def _access_token(
    settings: Settings, user: User, membership: Membership, family_id: uuid.UUID
) -> tuple[str, int]:
    claims = security.AccessClaims(
        user.id, membership.tenant_id, membership.role.value, user.is_superuser, family_id
    )
    return security.issue_access_token(settings, claims)


async def issue_tokens(
    session: AsyncSession,
    settings: Settings,
    user: User,
    membership: Membership,
    family_id: uuid.UUID | None = None,
    successor: tuple[uuid.UUID, str, str] | None = None,
) -> TokenPair:
    """A new access token and refresh token (`successor`'s, when a refresh rotates one)."""
    family_id = family_id or uuid.uuid4()
    access, lifetime = _access_token(settings, user, membership, family_id)
    if successor is None:
        token_id = uuid.uuid4()
        refresh, secret_hash = security.new_refresh_secret(token_id)
    else:
        token_id, refresh, secret_hash = successor
    session.add(
        RefreshToken(
            id=token_id,
            user_id=user.id,
            tenant_id=membership.tenant_id,
            family_id=family_id,
            secret_hash=secret_hash,
            expires_at=datetime.now(UTC) + timedelta(days=settings.refresh_token_days),
        )
    )
    await session.flush()
    return TokenPair(access_token=access, expires_in=lifetime, refresh_token=refresh)


@dataclass(frozen=True)
class ConsoleSignIn:
    """A console session begun: the cookie's token, its lifetime in seconds, its caller."""

    token: str
    lifetime: int
    principal: Principal


async def start_console_session(
    session: AsyncSession, settings: Settings, user: User, membership: Membership
) -> ConsoleSignIn:
    """A console sign-in: a refresh family of its own (so that sign-out, a password reset or
    a removal ends it as it ends the user's tokens) with no refresh token anybody holds, and the
    cookie's token."""
    family_id = uuid.uuid4()
    session.add(
        RefreshToken(
            id=uuid.uuid4(),
            user_id=user.id,
            tenant_id=membership.tenant_id,
            family_id=family_id,
            secret_hash=security.digest(secrets.token_urlsafe(32)),  # spent by nobody
            expires_at=datetime.now(UTC) + timedelta(hours=settings.console_session_hours),
        )
    )
    await session.flush()
    claims = security.AccessClaims(
        user.id, membership.tenant_id, membership.role.value, user.is_superuser, family_id
    )
    token, lifetime = security.issue_console_token(settings, claims)
    principal = Principal(
        kind="user",
        tenant_id=membership.tenant_id,
        scopes=ROLE_SCOPES[membership.role],
        user_id=user.id,
        role=membership.role,
        is_superuser=user.is_superuser,
        console_family=family_id,
    )
    return ConsoleSignIn(token, lifetime, principal)


async def end_console_session(session: AsyncSession, principal: Principal) -> None:
    assert principal.console_family is not None
    await _revoke_family(session, principal.console_family)
    target = ("user", principal.user_id)
    audit.record(session, principal.tenant_id, "auth.sign_out", principal.actor, target)


async def memberships_of(
    session: AsyncSession, user_id: uuid.UUID
) -> list[tuple[Membership, Tenant]]:
    """The user's active memberships and their tenants, oldest first (the tenant switcher)."""
    rows = await session.execute(
        select(Membership, Tenant)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(Membership.user_id == user_id, Membership.is_active.is_(True))
        .order_by(Membership.created_at)
    )
    return [(membership, tenant) for membership, tenant in rows]


async def switch_console_tenant(
    session: AsyncSession, settings: Settings, principal: Principal, slug: str
) -> ConsoleSignIn:
    """End this console session and start one in the user's tenant `slug` (404 for a tenant
    they are not an active member of, as for one that does not exist)."""
    assert principal.user_id is not None
    found = [
        (membership, tenant)
        for membership, tenant in await memberships_of(session, principal.user_id)
        if tenant.slug == slug
    ]
    if not found:
        raise NotFoundError(f"You are not a member of a tenant {slug!r}.")
    membership, tenant = found[0]
    refuse_inactive(tenant.status)
    user = await session.get_one(User, principal.user_id)
    await end_console_session(session, principal)
    audit.record(session, tenant.id, "auth.sign_in", f"user:{user.id}", ("user", user.id))
    return await start_console_session(session, settings, user, membership)


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


async def _presented(session: AsyncSession, token: str) -> RefreshToken:
    parts = security.split_refresh_token(token)
    stored = await session.get(RefreshToken, parts[0]) if parts else None
    if parts is None or stored is None or not security.same_digest(parts[1], stored.secret_hash):
        raise UnauthorizedError(BAD_TOKEN)
    return stored


async def refresh(session: AsyncSession, settings: Settings, token: str) -> TokenPair:
    """Rotate: the presented token is spent and its successor handed out.

    Spending is one conditional UPDATE: of concurrent refreshes with one token, the others wait
    for the first's row lock and find the token spent. A spent token presented again within
    REFRESH_REUSE_SECONDS of its spending, while its successor is unused, is a double submit
    or a retry: it gets the same successor (a new access token with it). Otherwise a spent
    token coming back is a replay, and its whole family is revoked."""
    stored = await _presented(session, token)
    if stored.expires_at <= datetime.now(UTC) and stored.revoked_at is None:
        raise UnauthorizedError(BAD_TOKEN)
    now = datetime.now(UTC)
    spent = await session.scalar(
        update(RefreshToken)
        .where(
            RefreshToken.id == stored.id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
        )
        .values(used_at=now, revoked_at=now)
        .returning(RefreshToken.id)
        .execution_options(synchronize_session=False)
    )
    successor = security.successor_refresh_secret(settings, token)
    if spent is None and not await _successor_unused(session, settings, stored.id, successor[0]):
        await _revoke_family(session, stored.family_id)
        raise TokenReuseError("This refresh token was already used; sign in again.")
    user = await session.get(User, stored.user_id)
    membership = await session.scalar(
        select(Membership).where(
            Membership.user_id == stored.user_id, Membership.tenant_id == stored.tenant_id
        )
    )
    if user is None or membership is None or not user.is_active:
        raise UnauthorizedError(BAD_TOKEN)
    await _active_tenant(session, stored.tenant_id)
    if spent is None:  # the same successor again, with an access token of its own
        access, lifetime = _access_token(settings, user, membership, stored.family_id)
        return TokenPair(access_token=access, expires_in=lifetime, refresh_token=successor[1])
    return await issue_tokens(
        session, settings, user, membership, stored.family_id, successor=successor
    )


async def _successor_unused(
    session: AsyncSession, settings: Settings, token_id: uuid.UUID, successor_id: uuid.UUID
) -> bool:
    """Whether a spent token came back within the reuse window while its successor is still
    unused and unrevoked (read now: the spend that won may have committed a moment ago)."""
    used_at = await session.scalar(select(RefreshToken.used_at).where(RefreshToken.id == token_id))
    since = datetime.now(UTC) - timedelta(seconds=settings.refresh_reuse_seconds)
    if used_at is None or used_at < since:
        return False
    successor = await session.scalar(
        select(RefreshToken.id).where(
            RefreshToken.id == successor_id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
        )
    )
    return successor is not None


async def logout(session: AsyncSession, token: str) -> None:
    stored = await _presented(session, token)
    await _revoke_family(session, stored.family_id)
    audit.record(
        session,
        stored.tenant_id,
        "auth.sign_out",
        f"user:{stored.user_id}",
        ("user", stored.user_id),
    )


async def revoke_refresh_tokens(
    session: AsyncSession, user_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> None:
    """End the user's sign-ins (all, or in one tenant): their refresh tokens and the access
    tokens those issued stop at the next request."""
    statement = update(RefreshToken).where(
        RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
    )
    if tenant_id is not None:
        statement = statement.where(RefreshToken.tenant_id == tenant_id)
    await session.execute(
        statement.values(revoked_at=datetime.now(UTC)).execution_options(synchronize_session=False)
    )


# The token's user, membership and tenant as they stand now, and whether its refresh family
# is still alive, in one round trip (no row when the user, membership or tenant is gone).
_TOKEN_HOLDER = with_limits(
    select(
        User.is_active,
        User.is_superuser,
        Tenant.status,
        Membership.role,
        exists()
        .where(
            RefreshToken.family_id == bindparam("token_family"),
            RefreshToken.revoked_at.is_(None),
        )
        .label("family_alive"),
    )
    .join(
        Membership,
        (Membership.user_id == User.id)
        & (Membership.tenant_id == bindparam("token_tenant"))
        & Membership.is_active.is_(True),
    )
    .join(Tenant, Tenant.id == Membership.tenant_id)
    .where(User.id == bindparam("token_user"))
)


async def principal_from_token(
    connection: AsyncConnection, settings: Settings, token: str, *, console: bool = False
) -> Principal:
    """The caller of a valid access token whose user is active and still an active member of
    an existing, unsuspended tenant, and whose sign-in was not ended (logout, reuse, a
    password reset); or of an OAuth client's token whose client is not revoked. Role and
    superuser come from the database, so a change applies at the next request. Read-only: one
    statement, no transaction needed around it."""
    try:
        claims = security.read_token(settings, token, console=console)
    except security.InvalidTokenError:
        raise UnauthorizedError(BAD_TOKEN) from None
    if isinstance(claims, security.ClientClaims):
        return await _principal_of_client(connection, claims)
    holder = (
        await connection.execute(
            _TOKEN_HOLDER,
            {
                "token_user": claims.user_id,
                "token_tenant": claims.tenant_id,
                "token_family": claims.family_id,
            },
        )
    ).one_or_none()
    if holder is None or not holder.is_active or not holder.family_alive:
        raise UnauthorizedError(BAD_TOKEN)
    refuse_inactive(holder.status)
    role = Role(holder.role)
    return Principal(
        kind="user",
        tenant_id=claims.tenant_id,
        scopes=ROLE_SCOPES[role],
        user_id=claims.user_id,
        role=role,
        is_superuser=holder.is_superuser,
        console_family=claims.family_id if console else None,
        limits=limits_from(holder),
    )


def _active_membership(user_id: object, tenant_id: object) -> ColumnElement[bool]:
    """An active user's active membership: what a machine credential's creator must still have."""
    return (
        (Membership.user_id == user_id)
        & (Membership.tenant_id == tenant_id)
        & Membership.is_active.is_(True)
        & User.is_active.is_(True)
    )


async def creator_role(
    session: AsyncSession, created_by: uuid.UUID | None, tenant_id: uuid.UUID
) -> Role | None:
    """The role the creator of an API key or OAuth client has in its tenant today; None once
    they were deactivated, removed or deleted."""
    return await session.scalar(
        select(Membership.role)
        .join(User, User.id == Membership.user_id)
        .where(_active_membership(created_by, tenant_id))
    )


# An OAuth client as it stands now: not revoked, its tenant's status, and the role its creator
# has in the tenant today (no row for a revoked client; a NULL role for a creator gone).
_CLIENT_HOLDER = with_limits(
    select(OAuthClient.scopes, Tenant.status, Membership.role)
    .join(Tenant, Tenant.id == OAuthClient.tenant_id)
    .outerjoin(User, User.id == OAuthClient.created_by)
    .outerjoin(Membership, _active_membership(OAuthClient.created_by, OAuthClient.tenant_id))
    .where(
        OAuthClient.id == bindparam("client"),
        OAuthClient.tenant_id == bindparam("client_tenant"),
        OAuthClient.revoked_at.is_(None),
    )
)


async def _principal_of_client(
    connection: AsyncConnection, claims: security.ClientClaims
) -> Principal:
    holder = (
        await connection.execute(
            _CLIENT_HOLDER, {"client": claims.client_id, "client_tenant": claims.tenant_id}
        )
    ).one_or_none()
    if holder is None or holder.role is None:
        raise UnauthorizedError(BAD_TOKEN)
    refuse_inactive(holder.status)
    return Principal(
        kind="oauth_client",
        tenant_id=claims.tenant_id,
        # The token's scopes, as far as the client and its creator may still use them.
        scopes=claims.scopes & frozenset(holder.scopes) & ROLE_SCOPES[Role(holder.role)],
        oauth_client_id=claims.client_id,
        limits=limits_from(holder),
    )


async def principal_from_api_key(session: AsyncSession, key: str) -> Principal:
    parts = security.split_api_key(key)
    stored = (
        await session.scalar(select(ApiKey).where(ApiKey.prefix == parts[0])) if parts else None
    )
    if (
        parts is None
        or stored is None
        or stored.revoked_at is not None
        or not security.same_digest(parts[1], stored.secret_hash)
    ):
        raise UnauthorizedError(BAD_TOKEN)
    limits = await _active_tenant_limits(session, stored.tenant_id)
    role = await creator_role(session, stored.created_by, stored.tenant_id)
    if role is None:  # its creator was deactivated, removed or deleted
        raise UnauthorizedError(BAD_TOKEN)
    now = datetime.now(UTC)
    if stored.last_used_at is None or now - stored.last_used_at > LAST_USED_GRANULARITY:
        stored.last_used_at = now
    return Principal(
        kind="api_key",
        tenant_id=stored.tenant_id,
        # Never more than its creator may do today (a demoted admin's keys shrink with them).
        scopes=frozenset(stored.scopes) & ROLE_SCOPES[role],
        api_key_id=stored.id,
        limits=limits,
    )


async def create_api_key(
    session: AsyncSession, principal: Principal, body: ApiKeyIn
) -> tuple[ApiKey, str]:
    key, prefix, secret_hash = security.new_api_key()
    api_key = ApiKey(
        tenant_id=principal.tenant_id,
        name=body.name,
        prefix=prefix,
        secret_hash=secret_hash,
        scopes=sorted(set(body.scopes)),
        created_by=principal.user_id,
    )
    session.add(api_key)
    await session.flush()
    await session.refresh(api_key)
    audit.record(
        session,
        principal.tenant_id,
        "api_key.created",
        principal.actor,
        ("api_key", api_key.id),
        {"name": api_key.name, "scopes": api_key.scopes, "prefix": prefix},
    )
    return api_key, key


async def api_keys(session: AsyncSession, tenant_id: uuid.UUID) -> list[ApiKey]:
    return await ApiKeyRepository(session, tenant_id).oldest_first()


async def revoke_api_key(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> ApiKey:
    api_key = await ApiKeyRepository(session, principal.tenant_id).get_or_404(key_id)
    if api_key.revoked_at is None:
        api_key.revoked_at = datetime.now(UTC)
        audit.record(
            session, principal.tenant_id, "api_key.revoked", principal.actor, ("api_key", key_id)
        )
    return api_key
