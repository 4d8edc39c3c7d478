from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from switchyard.api.app import create_app
from tests.fixtures.gateway import SettingsFactory, running


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never sends a byte."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in accepted:
        writer.close()
    server.close()


async def test_live_calls_no_dependency(make_settings: SettingsFactory) -> None:
    settings = make_settings(database_url="postgresql://nobody@127.0.0.1:9/none")
    async with running(create_app(settings)) as client:
        response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_full_report_with_postgres_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["service_type"] == "api-gateway"
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    postgres = body["checks"]["postgres"]
    assert postgres["status"] == "up"
    assert postgres["critical"] is True
    assert postgres["latency_ms"] > 0
    assert "error" not in postgres
    assert body["checks"]["redis"]["status"] == "up"
    assert body["checks"]["redis"]["critical"] is False  # a Redis outage only degrades
    assert (await client.get("/api/v1/health")).json()["checks"].keys() == {
        "postgres",
        "redis",
        "rabbitmq",
        "minio",
        "chroma",
        "neo4j",
        "zhipu",
    }
    assert (await client.get("/health/ready")).status_code == 200


async def test_postgres_down_is_503_with_the_error(make_settings: SettingsFactory) -> None:
    settings = make_settings(database_url="postgresql://nobody@127.0.0.1:9/none")
    async with running(create_app(settings)) as client:
        full = await client.get("/health")
        ready = await client.get("/health/ready")
    assert full.status_code == 503
    assert full.json()["status"] == "error"
    assert full.json()["checks"]["postgres"]["status"] == "down"
    assert "refused" in full.json()["checks"]["postgres"]["error"].lower()
    assert ready.status_code == 503


async def test_dependency_that_never_answers_is_cut_at_the_probe_timeout(
    make_settings: SettingsFactory, silent_server: int
) -> None:
    settings = make_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{silent_server}/none",
        database_connect_timeout_seconds=30,
        health_probe_timeout_seconds=0.5,
    )
    async with running(create_app(settings)) as client:
        started = time.monotonic()
        response = await client.get("/health")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"]["postgres"]["error"] == "no answer within 0.5 s"
    # Bounded by the probe timeout, not by the 30 s connect timeout.
    assert elapsed < 5


async def test_reports_are_cached_for_the_configured_time(make_settings: SettingsFactory) -> None:
    settings = make_settings(health_cache_seconds=30)
    async with running(create_app(settings)) as client:
        first = (await client.get("/health")).json()
        burst = await asyncio.gather(*(client.get("/health") for _ in range(20)))
    assert {response.json()["timestamp"] for response in burst} == {first["timestamp"]}
