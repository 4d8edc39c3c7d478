"""Annotated dependencies: what routes may ask for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.errors import ServiceUnavailableError
from switchyard.services.container import Services
from switchyard.services.health import HealthMonitor
from switchyard.settings import Settings


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_health(request: Request) -> HealthMonitor:
    return cast(HealthMonitor, request.app.state.health)


ServicesDep = Annotated[Services, Depends(get_services)]
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
