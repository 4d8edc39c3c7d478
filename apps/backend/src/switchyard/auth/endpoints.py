"""/api/v1/auth (sign-up, sign-in, tokens, me) and /api/v1/api-keys."""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Depends, Request, status
from pydantic import ValidationError

from switchyard.auth import service
from switchyard.auth.dependencies import (
    PrincipalDep,
    TenantAdminDep,
    limit_by_client_ip,
    limit_token_requests,
)
from switchyard.auth.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    Me,
    RefreshIn,
    Registered,
    RegisterIn,
    TenantSummary,
    TokenPair,
)
from switchyard.db.models import ApiKey, Role, Tenant, User
from switchyard.errors import InvalidInputError, field_errors
from switchyard.platform.dependencies import (
    OutboxDep,
    RateLimiterDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)

router = APIRouter(prefix="/auth", tags=["auth"])
keys_router = APIRouter(prefix="/api-keys", tags=["api keys"])

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def key_out(api_key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(api_key, from_attributes=True)


@router.post(
    "/register", status_code=status.HTTP_201_CREATED, dependencies=[Depends(limit_by_client_ip)]
)
async def register(
    body: RegisterIn, session: SessionDep, settings: SettingsDep, outbox: OutboxDep
) -> Registered:
    """A new tenant and its owner. A link to confirm the address is emailed (with
    REQUIRE_EMAIL_VERIFICATION, signing in waits for it)."""
    user, tenant = await service.register(session, settings, outbox, body)
    return Registered(
        user_id=user.id,
        email=user.email,
        tenant=TenantSummary.of(tenant),
        role=Role.OWNER,
        email_verified=user.email_verified_at is not None,
    )


async def _login_body(request: Request) -> LoginIn:
    """JSON, or the OAuth2 password form (`username`, `password`) of the docs' Authorize button."""
    try:
        if request.headers.get("content-type", "").startswith(FORM_TYPES):
            form = await request.form()
            return LoginIn(
                email=str(form.get("username", "")),
                password=str(form.get("password", "")),
                tenant=str(form["tenant"]) if "tenant" in form else None,
            )
        return LoginIn.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False, include_input=False), "body")
        raise InvalidInputError("The sign-in request is not valid.", errors) from None
    except json.JSONDecodeError:
        raise InvalidInputError.on(
            "body", "The body is not JSON.", message="invalid JSON", type="json"
        ) from None


@router.post(
    "/login",
    dependencies=[Depends(limit_by_client_ip)],
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": LoginIn.model_json_schema()},
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {
                            "username": {"type": "string", "description": "Email"},
                            "password": {"type": "string", "format": "password"},
                        },
                    }
                },
            },
            "required": True,
        }
    },
)
async def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
    services: ServicesDep,
) -> TokenPair:
    body = await _login_body(request)
    sessions = services.database_sessions
    user, membership = await service.sign_in(session, sessions, settings, limiter, body)
    return await service.issue_tokens(session, settings, user, membership)


@router.post("/refresh", dependencies=[Depends(limit_token_requests)])
async def refresh(body: RefreshIn, session: SessionDep, settings: SettingsDep) -> TokenPair:
    return await service.refresh(session, settings, body.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(body: RefreshIn, session: SessionDep) -> None:
    await service.logout(session, body.refresh_token)


@router.get("/me")
async def me(principal: PrincipalDep, session: SessionDep) -> Me:
    tenant = await session.get_one(Tenant, principal.tenant_id)
    user = await session.get(User, principal.user_id) if principal.user_id else None
    return Me(
        kind=principal.kind,
        oauth_client_id=principal.oauth_client_id,
        user_id=principal.user_id,
        email=user.email if user else None,
        api_key_id=principal.api_key_id,
        tenant=TenantSummary.of(tenant),
        role=principal.role,
        scopes=sorted(principal.scopes),
        is_superuser=principal.is_superuser,
    )


@keys_router.post("", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    body: ApiKeyIn, admin: TenantAdminDep, session: SessionDep
) -> ApiKeyCreated:
    api_key, secret = await service.create_api_key(session, admin, body)
    return ApiKeyCreated(**key_out(api_key).model_dump(), key=secret)


@keys_router.get("")
async def list_api_keys(admin: TenantAdminDep, session: SessionDep) -> list[ApiKeyOut]:
    return [key_out(api_key) for api_key in await service.api_keys(session, admin.tenant_id)]


@keys_router.delete("/{key_id}")
async def revoke_api_key(
    key_id: uuid.UUID, admin: TenantAdminDep, session: SessionDep
) -> ApiKeyOut:
    return key_out(await service.revoke_api_key(session, admin, key_id))
