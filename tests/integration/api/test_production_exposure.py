"""What a production gateway, worker and beat show a caller without credentials: no API
documents, no metrics, no configuration, a health status without the map behind it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.auth.security import CONSOLE_COOKIE
from switchyard.platform.metrics import MetricsServer
from switchyard.settings import Settings
from tests.fixtures.accounts import PASSWORD, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.servers import free_port

TOKEN = "operator-metrics-token-" + "m" * 20
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def production(make_settings: SettingsFactory) -> Settings:
    return make_settings(environment="production", metrics_token=TOKEN)


@pytest.fixture
async def client(production: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(production)) as client:
        yield client


async def test_production_serves_no_api_documents_unless_asked(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    for path in ("/docs", "/openapi.json", "/docs/oauth2-redirect"):
        assert (await client.get(path)).status_code == 404, path
    asked = make_settings(environment="production", metrics_token=TOKEN, api_docs=True)
    async with running(create_app(asked)) as documented:
        assert (await documented.get("/openapi.json")).status_code == 200
        assert (await documented.get("/docs")).status_code == 200


async def test_production_metrics_need_the_token(client: httpx.AsyncClient) -> None:
    refused = await client.get("/metrics")
    assert refused.status_code == 401
    assert "switchyard_http_requests_total" not in refused.text
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    served = await client.get("/metrics", headers=OPERATOR)
    assert served.status_code == 200
    assert "switchyard_http_requests_total" in served.text


async def test_runtime_configuration_needs_credentials(client: httpx.AsyncClient) -> None:
    refused = await client.get("/api/v1/config")
    assert refused.status_code == 401
    assert "cors_origins" not in refused.text
    account = await sign_up(client)
    shown = await client.get("/api/v1/config", headers=account.headers)
    assert shown.status_code == 200
    assert "limits" in shown.json()


async def test_production_health_without_the_token_is_status_only(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/health", "/health/ready", "/api/v1/health"):
        anonymous = await client.get(path)
        assert anonymous.status_code == 200, path
        assert anonymous.json() == {"status": "ok"}, path
    report = (await client.get("/health", headers=OPERATOR)).json()
    assert report["checks"]["postgres"]["status"] == "up"
    assert "latency_ms" in report["checks"]["postgres"]
    assert (await client.get("/health/live")).json() == {"status": "ok"}


def test_production_refuses_to_start_without_a_metrics_token(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(environment="production")
    assert any(line.startswith("METRICS_TOKEN: ") for line in settings.production_problems())
    assert not any(
        line.startswith("METRICS_TOKEN: ")
        for line in make_settings(
            environment="production", metrics_token=TOKEN
        ).production_problems()
    )


async def test_worker_and_beat_metrics_need_the_token() -> None:
    registry = CollectorRegistry()
    Counter("switchyard_probe_total", "A counter of this test", registry=registry).inc()
    server = MetricsServer(registry, "127.0.0.1", free_port(), SecretStr(TOKEN))
    assert server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with httpx.AsyncClient() as http:
            refused = await http.get(url)
            wrong = await http.get(url, headers={"Authorization": "Bearer wrong"})
            served = await http.get(url, headers=OPERATOR)
    finally:
        await asyncio.to_thread(server.stop)
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert "switchyard_probe_total" not in refused.text
    assert served.status_code == 200
    assert "switchyard_probe_total 1.0" in served.text


async def test_worker_and_beat_answer_probes_at_health_without_the_token_or_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verdict = [(True, "worker: heartbeat 1.0 s old")]
    server = MetricsServer(
        CollectorRegistry(), "127.0.0.1", free_port(), SecretStr(TOKEN), health=lambda: verdict[0]
    )
    assert server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as http:
            healthy = await http.get(f"{base}/health")
            verdict[0] = (False, "worker: heartbeat is 99 s old (limit 60 s)")
            with caplog.at_level(logging.WARNING, logger="switchyard.platform.metrics"):
                unhealthy = await http.get(f"{base}/health")
            metrics = await http.get(f"{base}/metrics")
    finally:
        await asyncio.to_thread(server.stop)
    assert (healthy.status_code, healthy.text) == (200, "ok\n")
    assert (unhealthy.status_code, unhealthy.text) == (503, "unhealthy\n")
    # The reason is for the operator's log, not for whoever reaches the port.
    [logged] = [r for r in caplog.records if r.message == "health probe: unhealthy"]
    assert logged.reason == "worker: heartbeat is 99 s old (limit 60 s)"  # type: ignore[attr-defined]
    assert metrics.status_code == 401  # the metrics still want the token


async def test_production_health_shows_a_superusers_console_every_check(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The console's health page: the whole report for a platform superuser's session, the
    status alone for anybody else's."""
    operator = await sign_up(client)
    member = await sign_up(client)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET is_superuser = true WHERE id = :id"), {"id": operator.user_id}
        )
    for account, sees_checks in ((operator, True), (member, False)):
        signed = await client.post(
            "/console/session", json={"email": account.email, "password": PASSWORD}
        )
        assert signed.status_code == 200, signed.text
        jar = SimpleCookie(signed.headers["set-cookie"])
        cookie = f"{CONSOLE_COOKIE}={jar[CONSOLE_COOKIE].value}"
        report = (await client.get("/health", headers={"Cookie": cookie})).json()
        assert ("checks" in report) is sees_checks
        assert report["status"] in ("ok", "degraded", "error")
