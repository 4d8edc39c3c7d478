"""Annotated dependencies: what routes may ask for (domains and api/ alike, so not in api/).

Every dependency is `async def`, even when it awaits nothing: FastAPI runs a plain `def`
dependency in its thread pool, and that hop (per dependency, per request) cost more than the
whole request on this machine (bench/gateway_overhead.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from switchyard.auth import service as auth_service
from switchyard.auth.principal import Principal
from switchyard.auth.scopes import ADMIN_ROLES
from switchyard.auth.security import API_KEY_MARKER
from switchyard.errors import (
    ForbiddenError,
    ServiceUnavailableError,
    SwitchyardError,
    TooManyRequestsError,
    UnauthorizedError,
)
from switchyard.logging import tenant_id_var
from switchyard.platform.broker import Broker
from switchyard.platform.registry import TaskRegistry
from switchyard.services.container import Services
from switchyard.services.graph import KnowledgeGraph
from switchyard.services.health import HealthMonitor
from switchyard.services.llm import ZhipuClient
from switchyard.services.postgres import once_more_if_dropped
from switchyard.services.ratelimit import RateLimiter
from switchyard.settings import Settings


async def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


async def get_settings(request: Request) -> Settings:
    return cast(Services, request.app.state.services).settings


async def get_health(request: Request) -> HealthMonitor:
    return cast(HealthMonitor, request.app.state.health)


async def get_broker(request: Request) -> Broker:
    broker = cast(Broker | None, request.app.state.broker)
    if broker is None:
        raise ServiceUnavailableError("No task broker is configured (CELERY_BROKER_URL).")
    return broker


async def get_registry(request: Request) -> TaskRegistry:
    return cast(TaskRegistry, request.app.state.registry)


ServicesDep = Annotated[Services, Depends(get_services)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
RegistryDep = Annotated[TaskRegistry, Depends(get_registry)]

SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_llm(services: ServicesDep) -> ZhipuClient:
    """The LLM client, or 503 naming ZHIPUAI_API_KEY."""
    return services.require_llm()


async def get_graph(services: ServicesDep) -> KnowledgeGraph:
    """The knowledge graph, or 503 naming NEO4J_URI."""
    return services.require_graph()


LLMDep = Annotated[ZhipuClient, Depends(get_llm)]
GraphDep = Annotated[KnowledgeGraph, Depends(get_graph)]
HealthDep = Annotated[HealthMonitor, Depends(get_health)]


def _database(services: Services) -> tuple[async_sessionmaker[AsyncSession], AsyncEngine]:
    """The session factory and engine, or 503 when no database is configured."""
    if services.sessions is None or services.database is None:
        raise ServiceUnavailableError("No database is configured (DATABASE_URL).")
    return services.sessions, services.database


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """The unit of work of one request: committed when the route returns, else rolled back."""
    sessions, _ = _database(services)
    async with sessions() as session:
        try:
            yield session
        except SwitchyardError as exc:
            await (session.commit() if exc.persist_changes else session.rollback())
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# Committed before the response is sent (scope "function"): a 2xx means the change is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_rate_limiter(request: Request) -> RateLimiter:
    return cast(RateLimiter, request.app.state.rate_limiter)


RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]


async def enforce(limiter: RateLimiter, limit: str, *keys: str, count: bool = True) -> None:
    """429 when `limit` is used up for `keys`; counts this request unless `count` is False."""
    decision = await (limiter.hit if count else limiter.peek)(limit, *keys)
    if not decision.allowed:
        raise TooManyRequestsError(
            f"Too many requests (limit {limit}); retry after {decision.retry_after} s.",
            decision.retry_after,
        )


async def limit_by_client_ip(
    request: Request, settings: SettingsDep, limiter: RateLimiterDep
) -> None:
    """For sign-up and sign-in: counted per client address, before any credential is read."""
    client = request.client.host if request.client else "unknown"
    await enforce(limiter, settings.rate_limit_auth, "auth", client)


def _credential(request: Request) -> str:
    api_key = request.headers.get("X-API-Key")
    if api_key:
        return api_key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    raise UnauthorizedError("Authentication is required: a bearer token or an API key.")


# Declared so that the OpenAPI page offers "Authorize"; the header is read below either way.
_bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)
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
    sessions, engine = _database(services)
    if credential.startswith(API_KEY_MARKER):
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
    await enforce(limiter, settings.rate_limit_api, "api", principal.rate_limit_key)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


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


async def require_superuser(principal: PrincipalDep) -> Principal:
    if not principal.is_superuser:
        raise ForbiddenError("This action needs a platform superuser.")
    return principal


TenantAdminDep = Annotated[Principal, Depends(require_tenant_admin)]
SuperuserDep = Annotated[Principal, Depends(require_superuser)]
