"""Annotated dependencies: what routes may ask for (domains and api/ alike, so not in api/)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import DEFAULT_TENANT_ID
from switchyard.errors import ServiceUnavailableError
from switchyard.platform.broker import Broker
from switchyard.platform.registry import TaskRegistry
from switchyard.services.container import Services
from switchyard.services.health import HealthMonitor
from switchyard.settings import Settings


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_health(request: Request) -> HealthMonitor:
    return cast(HealthMonitor, request.app.state.health)


def get_broker(request: Request) -> Broker:
    broker = cast(Broker | None, request.app.state.broker)
    if broker is None:
        raise ServiceUnavailableError("No task broker is configured (CELERY_BROKER_URL).")
    return broker


def get_registry(request: Request) -> TaskRegistry:
    return cast(TaskRegistry, request.app.state.registry)


def get_tenant_id() -> uuid.UUID:
    """The caller's tenant; the default tenant until authentication exists."""
    return DEFAULT_TENANT_ID


ServicesDep = Annotated[Services, Depends(get_services)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
RegistryDep = Annotated[TaskRegistry, Depends(get_registry)]
TenantDep = Annotated[uuid.UUID, Depends(get_tenant_id)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HealthDep = Annotated[HealthMonitor, Depends(get_health)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """The unit of work of one request: committed when the route returns, else rolled back."""
    if services.sessions is None:
        raise ServiceUnavailableError("No database is configured (DATABASE_URL).")
    async with services.sessions() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


SessionDep = Annotated[AsyncSession, Depends(get_session)]
