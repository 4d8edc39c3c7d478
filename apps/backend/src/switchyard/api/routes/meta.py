"""What this deployment is and how it is configured."""

from __future__ import annotations

from fastapi import APIRouter

from switchyard import API_VERSION, __version__
from switchyard.api.schemas import ApiInfo, Limits, RuntimeConfig
from switchyard.auth.dependencies import PrincipalDep
from switchyard.platform.dependencies import ServicesDep

router = APIRouter(tags=["meta"])


@router.get("/")
async def api_info(services: ServicesDep) -> ApiInfo:
    return ApiInfo(
        name=services.settings.app_name,
        version=__version__,
        api_version=API_VERSION,
        service_type=services.service_type,
        environment=services.settings.environment.value,
    )


@router.get("/config")
async def runtime_config(services: ServicesDep, _: PrincipalDep) -> RuntimeConfig:
    """For signed-in callers only: origins, pool sizes and enabled services map the
    deployment."""
    settings = services.settings
    return RuntimeConfig(
        name=settings.app_name,
        version=__version__,
        environment=settings.environment.value,
        service_type=services.service_type,
        features=settings.features,
        cors_origins=settings.cors_origins,
        limits=Limits(
            max_request_body_bytes=settings.max_request_body_bytes,
            health_probe_timeout_seconds=settings.health_probe_timeout_seconds,
            health_cache_seconds=settings.health_cache_seconds,
            database_pool_size=settings.database_pool_size,
            database_max_overflow=settings.database_max_overflow,
            database_statement_timeout_ms=settings.database_statement_timeout_ms,
        ),
        services=services.enabled(),
    )
