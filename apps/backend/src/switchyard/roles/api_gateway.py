"""The `api-gateway` role: FastAPI on uvicorn."""

from __future__ import annotations

import uvicorn

from switchyard.api.app import create_app
from switchyard.api.http_protocol import bounded_head_protocol
from switchyard.logging import logging_config
from switchyard.platform.broker import check_topology
from switchyard.roles.worker import require, vector_server_problems
from switchyard.settings import Settings


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


def run(settings: Settings) -> int:
    database = [] if settings.database else ["DATABASE_URL: required by the api-gateway role"]
    require(database, vector_server_problems(settings, "api-gateway"))
    check_topology(settings)
    serve(settings, "api-gateway")
    return 0
