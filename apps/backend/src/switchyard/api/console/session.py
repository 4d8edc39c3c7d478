"""/console/session: sign in to the console (an httpOnly, SameSite=Lax cookie; Secure outside
development), who is signed in with the session's CSRF token, the tenant switcher, sign-out.

The cookie is accepted by every /api/v1 route as a bearer token is, with the same scopes and
tenant rules; its state-changing requests must carry the CSRF token (auth.dependencies)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from switchyard.auth import security
from switchyard.auth import service as auth_service
from switchyard.auth.dependencies import PrincipalDep, limit_by_client_ip, refuse_other_origins
from switchyard.auth.principal import Principal
from switchyard.auth.schemas import LoginIn, TenantSummary
from switchyard.auth.service import ConsoleSignIn
from switchyard.db.models import Role, Tenant, User
from switchyard.errors import ForbiddenError, InvalidInputError
from switchyard.platform.dependencies import (
    RateLimiterDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)
from switchyard.settings import Settings

router = APIRouter(prefix="/console/session", include_in_schema=False)


class Membership(BaseModel):
    tenant: TenantSummary
    role: Role


class ConsoleSession(BaseModel):
    """Who is signed in to the console, where, and the token its changes must carry."""

    user_id: uuid.UUID
    email: str
    tenant: TenantSummary
    role: Role | None
    scopes: list[str]
    is_superuser: bool
    memberships: list[Membership]
    csrf_token: str = Field(description="Send it as X-CSRF-Token with every POST/PATCH/DELETE")


class TenantSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=63, description="The tenant's slug")


async def console_principal(principal: PrincipalDep) -> Principal:
    if principal.console_family is None:
        raise ForbiddenError("This is the console's own session route (its cookie only).")
    return principal


ConsolePrincipal = Annotated[Principal, Depends(console_principal)]


def _same_origin(request: Request) -> None:
    """Sign-in is refused from another origin's page (login CSRF); JSON only, which no
    cross-site form can send."""
    refuse_other_origins(request, "Refused: sign in to the console from its own page.")
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise InvalidInputError.on(
            "body", "Send the sign-in as JSON.", message="application/json", type="content_type"
        )


def _set_cookie(response: Response, settings: Settings, started: ConsoleSignIn) -> None:
    response.set_cookie(
        security.CONSOLE_COOKIE,
        started.token,
        max_age=started.lifetime,
        path="/",
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",
    )


async def _view(session: SessionDep, settings: Settings, principal: Principal) -> ConsoleSession:
    assert principal.user_id is not None
    assert principal.console_family is not None
    user = await session.get_one(User, principal.user_id)
    rows = await auth_service.memberships_of(session, principal.user_id)
    return ConsoleSession(
        user_id=user.id,
        email=user.email,
        tenant=TenantSummary.of(await session.get_one(Tenant, principal.tenant_id)),
        role=principal.role,
        scopes=sorted(principal.scopes),
        is_superuser=principal.is_superuser,
        memberships=[
            Membership(tenant=TenantSummary.of(tenant), role=membership.role)
            for membership, tenant in rows
        ],
        csrf_token=security.csrf_token(settings, principal.console_family),
    )


@router.post("", dependencies=[Depends(limit_by_client_ip)])
async def sign_in(
    body: LoginIn,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
    services: ServicesDep,
) -> ConsoleSession:
    """Sign in with email and password (and `tenant`, a slug, for a user of several)."""
    _same_origin(request)
    user, membership = await auth_service.sign_in(
        session, services.database_sessions, settings, limiter, body
    )
    started = await auth_service.start_console_session(session, settings, user, membership)
    _set_cookie(response, settings, started)
    return await _view(session, settings, started.principal)


@router.get("")
async def current(
    principal: ConsolePrincipal, session: SessionDep, settings: SettingsDep
) -> ConsoleSession:
    return await _view(session, settings, principal)


@router.post("/tenant")
async def switch_tenant(
    body: TenantSwitch,
    principal: ConsolePrincipal,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> ConsoleSession:
    """Continue in another of the user's tenants: this session ends, one there begins."""
    started = await auth_service.switch_console_tenant(session, settings, principal, body.tenant)
    _set_cookie(response, settings, started)
    return await _view(session, settings, started.principal)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def sign_out(
    principal: ConsolePrincipal, response: Response, session: SessionDep, settings: SettingsDep
) -> None:
    """End the session: its cookie stops working at once, wherever a copy of it is."""
    await auth_service.end_console_session(session, principal)
    response.delete_cookie(
        security.CONSOLE_COOKIE,
        path="/",
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",
    )
