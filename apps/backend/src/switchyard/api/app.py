"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from switchyard import API_VERSION, __version__, tracing
from switchyard.api.console import pages as console_pages
from switchyard.api.console import session as console_session
from switchyard.api.errors import install_exception_handlers
from switchyard.api.input_guard import InputGuard
from switchyard.api.metrics import POOLS, RouteTemplates
from switchyard.api.middleware import REQUEST_ID_HEADER, RequestContextMiddleware
from switchyard.api.openapi import document_errors
from switchyard.api.routes import health, meta, metrics, objects
from switchyard.domains import load_domains, registry_for, routers
from switchyard.platform.gateway import Gateway
from switchyard.platform.metrics import HOST
from switchyard.services import email
from switchyard.services.health import announce
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

# Multipart framing around an uploaded file: headers, boundaries and the title field.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def create_app(settings: Settings, service_type: str = "api-gateway") -> FastAPI:
    domains = load_domains(settings.domain_packages)  # a bad DOMAIN_PACKAGES stops it here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _announce_generated_secret(settings)
        email.announce(settings)
        gateway = Gateway.create(settings, service_type, registry_for(settings, domains))
        app.state.gateway = gateway
        services = gateway.services
        engines = [("main", services.database)] if services.database is not None else []
        engines += [(name, bind.engine) for name, bind in services.binds.items()]
        for database, engine in engines:
            POOLS.track(engine, database)
        HOST.watch(settings.var_dir)
        # Heavy clients are loaded where they are used, unless asked for at start (WARM_UP).
        warm_up = asyncio.create_task(services.warm_up() if settings.warm_up else asyncio.sleep(0))
        announced = asyncio.create_task(announce(gateway.health))
        try:
            yield
        finally:
            for _, engine in engines:
                POOLS.forget(engine)
            for started in (warm_up, announced):
                started.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await started
            await gateway.close()

    app = _new_app(settings, lifespan)
    tracing.instrument_app(app)
    install_exception_handlers(app)
    document_errors(app)
    _add_middleware(app, settings)

    app.include_router(health.router)
    app.include_router(metrics.router)
    api = f"/api/{API_VERSION}"
    app.include_router(meta.router, prefix=api)
    for router in routers(domains):
        app.include_router(router, prefix=api)
    app.include_router(objects.router)
    if settings.console_enabled:
        app.include_router(console_session.router)
        app.mount("/console/assets", console_pages.assets, name="console-assets")
        app.include_router(console_pages.router)
    app.include_router(health.router, prefix=api, include_in_schema=False)
    app.state.route_templates = RouteTemplates(app.routes)
    return app


def _new_app(settings: Settings, lifespan: Any) -> FastAPI:
    """With API documents (not in production, unless API_DOCS): Swagger UI from assets in a
    package, not a CDN, so /docs works offline and air-gapped."""
    common: dict[str, Any] = {
        "title": settings.app_name,
        "version": __version__,
        "lifespan": lifespan,
        "redoc_url": None,
    }
    if settings.docs_enabled:
        return FastAPIOffline(
            docs_url="/docs", openapi_url="/openapi.json", static_url="/docs/assets", **common
        )
    return FastAPI(docs_url=None, openapi_url=None, **common)


def _announce_generated_secret(settings: Settings) -> None:
    if settings.jwt_secret is None:
        settings.signing_secret()  # made now, so a VAR_DIR that cannot be written fails here
        logger.warning(
            "JWT_SECRET is not set: tokens are signed with a secret generated into "
            "LOCAL_SECRETS_DIR (default VAR_DIR)/jwt.secret; set JWT_SECRET when several "
            "gateways serve one deployment"
        )


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost last: the request context (request id, size limit, last-resort errors), then
    the input guard, then CORS."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(InputGuard)  # inside the size limit and the request id
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        upload_body_bytes=settings.document_max_bytes + UPLOAD_OVERHEAD_BYTES,
        upload_paths=(f"/api/{API_VERSION}/documents",),
        max_head_bytes=settings.max_request_header_bytes,
    )
