"""The `api-gateway` role: FastAPI on uvicorn."""

from __future__ import annotations

import uvicorn

from switchyard.api.app import create_app
from switchyard.api.http_protocol import bounded_head_protocol
from switchyard.logging import logging_config
from switchyard.platform.broker import check_topology
from switchyard.roles.worker import require, vector_server_problems
from switchyard.settings import Environment, Settings


def serve(settings: Settings, service_type: str) -> None:
    """Serve the gateway until SIGINT or SIGTERM; uvicorn drains requests and runs the lifespan."""
    app = create_app(settings, service_type)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=logging_config(settings.log_level, service_type),
        access_log=False,
        server_header=False,
        http=bounded_head_protocol(
            settings.max_request_header_bytes, settings.request_header_timeout_seconds
        ),
        # Forwarded headers only from the configured proxies (uvicorn trusts loopback otherwise).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or "",
        timeout_graceful_shutdown=settings.api_shutdown_grace_seconds,
    )


def gateway_problems(settings: Settings) -> list[str]:
    """DATABASE_URL always; in production also what a gateway uses for every request (rate
    limits, live events, the run cache) and to accept runs, which elsewhere may be left out."""
    problems = [] if settings.database_url else ["DATABASE_URL: required by the api-gateway role"]
    if settings.environment is Environment.PRODUCTION:
        for name, value in (
            ("REDIS_URL", settings.redis_url),
            ("CELERY_BROKER_URL", settings.celery_broker_url),
        ):
            if value is None:
                problems.append(f"{name}: required by the api-gateway role in production")
    return problems


def run(settings: Settings) -> int:
    require(gateway_problems(settings), vector_server_problems(settings, "api-gateway"))
    check_topology(settings)
    serve(settings, "api-gateway")
    return 0
