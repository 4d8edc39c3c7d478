from __future__ import annotations

import json

import httpx

from switchyard import __version__
from switchyard.api.app import create_app
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running


async def test_api_root_describes_the_deployment(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/")
    assert response.status_code == 200
    assert response.json() == {
        "name": "Switchyard",
        "version": __version__,
        "api_version": "v1",
        "service_type": "api-gateway",
        "environment": "test",
    }


async def test_config_reports_features_limits_and_services(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        features="signup,graph", max_request_body_bytes=4096, health_probe_timeout_seconds=1.5
    )
    async with running(create_app(settings)) as client:
        anonymous = await client.get("/api/v1/config")
        assert anonymous.status_code == 401
        account = await sign_up(client)
        body = (await client.get("/api/v1/config", headers=account.headers)).json()
    assert body["features"] == ["signup", "graph"]
    assert body["limits"]["max_request_body_bytes"] == 4096
    assert body["limits"]["health_probe_timeout_seconds"] == 1.5
    assert body["services"]["postgres"] is True
    assert body["services"]["redis"] is True
    assert body["services"]["llm"] is False


async def test_config_never_returns_a_secret(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        jwt_secret="jwt-" + "s" * 40,
        neo4j_uri="bolt://graph:7687",
        neo4j_password="neo4j-pass-unique-1",
        minio_endpoint="objects:9000",
        minio_access_key="minio-access-unique-2",
        minio_secret_key="minio-secret-unique-3",
        zhipuai_api_key="zhipu-key-unique-4",
        redis_url="redis://:redis-pass-unique-5@cache:6379/0",
        celery_broker_url="amqp://u:broker-pass-unique-6@mq//",
    )
    secrets = settings.secret_values()
    assert len(secrets) >= 8
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        response = await client.get("/api/v1/config", headers=account.headers)
    assert response.status_code == 200
    assert response.json()["services"] == {
        "postgres": True,
        "redis": True,
        "broker": True,
        "neo4j": True,
        "objects": True,
        "vectors": True,
        "llm": True,
    }
    text = json.dumps(response.json())
    leaked = [secret for secret in secrets if secret in text]
    assert leaked == []


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/config" in spec["paths"]
    assert "/health" in spec["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_cors_allows_configured_origins_only(make_settings: SettingsFactory) -> None:
    settings = make_settings(cors_origins="https://app.example")
    async with running(create_app(settings)) as client:
        allowed = await client.get("/api/v1/", headers={"Origin": "https://app.example"})
        other = await client.get("/api/v1/", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
