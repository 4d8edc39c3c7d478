"""PostgreSQL stopped (a relay in front of it cut: connections dropped, new ones refused):
`/health/live` stays 200, `/health/ready` turns 503 within the probe timeout, API calls answer
503 problem+json with Retry-After (never 500, never a hang), and everything recovers by itself
once the server is back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from sqlalchemy.engine import URL

from switchyard.api.app import create_app
from tests.fixtures.accounts import PASSWORD, sign_up
from tests.fixtures.faults import relayed
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT

PROBE_TIMEOUT = 1.0
RUN = {"task": "system.echo", "payload": {"message": "outage"}}


async def timed(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    return response, time.perf_counter() - started


async def test_api_answers_503_while_the_database_is_down_and_recovers(
    make_settings: SettingsFactory, database_url: URL, broker_url: str
) -> None:
    with relayed(database_url) as (relay, through):
        settings = make_settings(
            database_url=through.render_as_string(hide_password=False),
            celery_broker_url=broker_url,
            task_delivery_limit=DELIVERY_LIMIT,  # the session's queues are declared so
            health_probe_timeout_seconds=PROBE_TIMEOUT,
            health_cache_seconds=0,
        )
        async with running(create_app(settings)) as client:
            account = await sign_up(client)
            authenticated: dict[str, Any] = {"headers": account.headers}
            assert (await client.get("/api/v1/tasks/", headers=account.headers)).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200

            relay.stop()
            live, took = await timed(client, "GET", "/health/live")
            assert live.status_code == 200
            ready, took = await timed(client, "GET", "/health/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["postgres"]["status"] == "down"
            assert took <= PROBE_TIMEOUT + 0.5
            calls: list[tuple[str, str, dict[str, Any]]] = [
                ("GET", "/api/v1/tasks/", authenticated),
                ("POST", "/api/v1/tasks/run", {"json": RUN, **authenticated}),
                ("GET", "/api/v1/tasks/registered", authenticated),
                (
                    "POST",
                    "/api/v1/auth/login",
                    {"json": {"email": account.email, "password": PASSWORD}},
                ),
            ]
            for method, path, options in calls:
                answer, took = await timed(client, method, path, **options)
                assert answer.status_code == 503, (path, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["retry-after"] == "5"
                problem = answer.json()
                assert problem["code"] == "dependency_unavailable"
                assert problem["detail"] == "The database is unreachable; try again shortly."
                assert "Traceback" not in answer.text
                assert took <= settings.database_connect_timeout_seconds + 0.5, path

            relay.start()
            deadline = time.monotonic() + 15
            while (await client.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "readiness did not recover"
                await asyncio.sleep(0.2)
            for method, path, options in calls:
                answer = await client.request(method, path, **options)
                assert answer.status_code in (200, 202), (path, answer.text)
