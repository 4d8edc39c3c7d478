"""Annotated dependencies of the request: its services, clients and unit of work (for
domains and api/ alike, so not in api/; who is calling is `auth.dependencies`).

Every dependency is `async def`, even when it awaits nothing: FastAPI runs a plain `def`
dependency in its thread pool, and that hop (per dependency, per request) cost more than the
whole request on this machine (bench/gateway_overhead.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.session import unit_of_work
from switchyard.errors import ServiceUnavailableError
from switchyard.platform.broker import Broker
from switchyard.platform.gateway import gateway_of
from switchyard.platform.outbox import Outbox
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.submission import NO_BROKER, Submissions
from switchyard.services.container import Services
from switchyard.services.health import HealthMonitor
from switchyard.services.llm import ZhipuClient
from switchyard.services.ratelimit import RateLimiter
from switchyard.settings import Settings


async def get_services(request: Request) -> Services:
    return gateway_of(request).services


async def get_settings(request: Request) -> Settings:
    return gateway_of(request).services.settings


async def get_health(request: Request) -> HealthMonitor:
    return gateway_of(request).health


async def get_broker(request: Request) -> Broker:
    broker = gateway_of(request).broker
    if broker is None:
        raise ServiceUnavailableError(NO_BROKER)
    return broker


async def get_registry(request: Request) -> TaskRegistry:
    return gateway_of(request).registry


async def get_outbox(request: Request) -> Outbox:
    """Platform runs (account email): published after the commit if a broker is there, else
    by beat's outbox; never a 503 for the broker."""
    return Outbox(gateway_of(request).submissions)


async def get_submissions(request: Request) -> Submissions:
    """The way runs enter, for routes that submit on a caller's behalf: 503 naming what is
    missing (a run the broker cannot take is refused, so a broker is required up front)."""
    gateway = gateway_of(request)
    if gateway.broker is None:
        raise ServiceUnavailableError(NO_BROKER)
    if gateway.submissions is None:  # no database: refused before, by the session
        raise ServiceUnavailableError("No database is configured (DATABASE_URL).")
    return gateway.submissions


ServicesDep = Annotated[Services, Depends(get_services)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]
SubmissionsDep = Annotated[Submissions, Depends(get_submissions)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
RegistryDep = Annotated[TaskRegistry, Depends(get_registry)]

SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_llm(services: ServicesDep) -> ZhipuClient:
    """The LLM client, or 503 naming ZHIPUAI_API_KEY."""
    return services.require_llm()


LLMDep = Annotated[ZhipuClient, Depends(get_llm)]
HealthDep = Annotated[HealthMonitor, Depends(get_health)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """The unit of work of one request (`db.session.unit_of_work`): committed when the route
    returns, else rolled back; the only place a request's changes are committed."""
    async with services.database_sessions() as session, unit_of_work(session):
        yield session


# Committed before the response is sent (scope "function"): a 2xx means the change is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_rate_limiter(request: Request) -> RateLimiter:
    return gateway_of(request).rate_limiter


RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
