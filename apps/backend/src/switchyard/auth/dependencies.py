"""Who is calling: the principal of a request (bearer token or API key, else the console's
session cookie, checked against forgery), its tenant, and the checks routes declare (scopes,
tenant admin, superuser); rate limited per caller."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.openapi.models import (
    OAuthFlowClientCredentials,
    OAuthFlowPassword,
    OAuthFlows,
)
from fastapi.security import APIKeyHeader, OAuth2

from switchyard.auth import security
from switchyard.auth import service as auth_service
from switchyard.auth.principal import Principal
from switchyard.auth.scopes import ADMIN_ROLES, SCOPES
from switchyard.auth.security import API_KEY_MARKER, CONSOLE_COOKIE, CSRF_HEADER
from switchyard.db.engine import once_more_if_dropped
from switchyard.db.models import Role
from switchyard.errors import ForbiddenError, UnauthorizedError
from switchyard.logging import tenant_id_var
from switchyard.platform.dependencies import (
    RateLimiterDep,
    ServicesDep,
    SettingsDep,
)
from switchyard.services.container import Services
from switchyard.settings import Environment, Settings


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def limit_by_client_ip(
    request: Request, settings: SettingsDep, limiter: RateLimiterDep
) -> None:
    """For what takes a password or a one-time link (sign-up, sign-in, resets): counted per
    client address, before any credential is read."""
    await limiter.enforce(settings.rate_limit_auth, "auth", client_address(request))


async def limit_token_requests(
    request: Request, settings: SettingsDep, limiter: RateLimiterDep
) -> None:
    """For what exchanges a high-entropy credential for a token (a refresh): its own, wider
    bucket per client address."""
    await limiter.enforce(settings.rate_limit_tokens, "tokens", client_address(request))


def _credential(request: Request) -> str | None:
    api_key = request.headers.get("X-API-Key")
    if api_key:
        return api_key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refuse_other_origins(request: Request, refusal: str) -> None:
    """403 when the browser says (Origin) that another site's or port's page sent this."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise ForbiddenError(refusal)


def refuse_forgery(request: Request, settings: Settings, family_id: uuid.UUID) -> None:
    """A console session changes state only from the console's own pages: the request's
    Origin, when sent, is this host, and it carries the session's CSRF token in a header (which
    no cross-site form or link can set). The session cookie is SameSite=Lax besides."""
    if request.method in SAFE_METHODS:
        return
    refuse_other_origins(
        request, "Refused: a console session accepts changes from its own pages only."
    )
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), security.csrf_token(settings, family_id).encode()):
        raise ForbiddenError(f"Refused: the console's {CSRF_HEADER} header is missing or wrong.")


# Declared so that the OpenAPI page offers "Authorize": a user's password sign-in, or an OAuth
# client's credentials (client-credentials grant); the header is read below either way.
_bearer = OAuth2(
    flows=OAuthFlows(
        password=OAuthFlowPassword(tokenUrl="/api/v1/auth/login"),
        clientCredentials=OAuthFlowClientCredentials(
            tokenUrl="/api/v1/oauth/token", scopes=dict(SCOPES)
        ),
    ),
    scheme_name="OAuth2",
    auto_error=False,
)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


async def get_principal(
    request: Request,
    services: ServicesDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
    _token: Annotated[str | None, Depends(_bearer)] = None,
    _key: Annotated[str | None, Depends(_api_key)] = None,
) -> Principal:
    """The caller, from `Authorization: Bearer <token or key>` or `X-API-Key`; rate limited.

    Outside the request's unit of work, so a route that needs no database (or only one
    statement) opens no transaction for the caller's sake: an access token is checked with one
    autocommitted read; an API key in a short transaction of its own, as its use is recorded
    (`last_used_at`)."""
    credential = _credential(request)
    sessions, engine = services.database_sessions, services.database_engine
    if credential is None:
        principal = await _console_principal(request, services, settings)
    elif credential.startswith(API_KEY_MARKER):
        async with sessions.begin() as session:
            principal = await auth_service.principal_from_api_key(session, credential)
    else:
        principal = await once_more_if_dropped(
            engine,
            lambda connection, _: auth_service.principal_from_token(
                connection, settings, credential
            ),
        )
    tenant_id_var.set(str(principal.tenant_id))  # on every log line of this request
    per_tenant = principal.plan_rate_limit("api_requests_per_minute")
    if per_tenant:  # the plan's: all of the tenant's callers together
        await limiter.enforce(per_tenant, "api_tenant", str(principal.tenant_id))
    else:
        await limiter.enforce(settings.rate_limit_api, "api", principal.rate_limit_key)
    return principal


async def _console_principal(request: Request, services: Services, settings: Settings) -> Principal:
    cookie = request.cookies.get(CONSOLE_COOKIE) if settings.console_enabled else None
    if not cookie:
        raise UnauthorizedError("Authentication is required: a bearer token or an API key.")
    principal = await once_more_if_dropped(
        services.database_engine,
        lambda connection, _: auth_service.principal_from_token(
            connection, settings, cookie, console=True
        ),
    )
    assert principal.console_family is not None
    refuse_forgery(request, settings, principal.console_family)
    return principal


async def console_superuser(request: Request, services: ServicesDep, settings: SettingsDep) -> bool:
    """Whether the request comes from a platform superuser's console session (its cookie; a
    read, so no CSRF token): /health shows them the whole report in production."""
    if settings.environment is not Environment.PRODUCTION or not request.cookies.get(
        CONSOLE_COOKIE
    ):
        return False  # outside production /health shows everything anyway
    try:
        principal = await _console_principal(request, services, settings)
    except (UnauthorizedError, ForbiddenError):
        return False
    return principal.is_superuser


PrincipalDep = Annotated[Principal, Depends(get_principal)]
ConsoleSuperuserDep = Annotated[bool, Depends(console_superuser)]


async def get_tenant_id(principal: PrincipalDep) -> uuid.UUID:
    return principal.tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant_id)]


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that answers 403, naming `scope`, when the caller lacks it."""

    async def check(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes:
            raise ForbiddenError(f"This action needs the scope {scope!r}.")
        return principal

    check.required_scope = scope  # type: ignore[attr-defined]  # read by the access tests
    return check


async def require_tenant_admin(principal: PrincipalDep) -> Principal:
    if principal.kind != "user" or principal.role not in ADMIN_ROLES:
        raise ForbiddenError("This action needs a tenant owner or admin (signed in as a user).")
    return principal


async def require_user(principal: PrincipalDep) -> Principal:
    """A signed-in user (any role), not a machine."""
    if principal.kind != "user":
        raise ForbiddenError("This action needs a signed-in user, not an API key or client.")
    return principal


async def require_owner(principal: PrincipalDep) -> Principal:
    if principal.kind != "user" or principal.role is not Role.OWNER:
        raise ForbiddenError("This action needs the tenant's owner.")
    return principal


async def require_superuser(principal: PrincipalDep) -> Principal:
    if not principal.is_superuser:
        raise ForbiddenError("This action needs a platform superuser.")
    return principal


TenantAdminDep = Annotated[Principal, Depends(require_tenant_admin)]
UserDep = Annotated[Principal, Depends(require_user)]
OwnerDep = Annotated[Principal, Depends(require_owner)]
SuperuserDep = Annotated[Principal, Depends(require_superuser)]
