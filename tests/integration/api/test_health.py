from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

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
        "disk",
        "memory",
    }
    assert body["checks"]["disk"]["status"] == "up"
    assert body["checks"]["memory"]["status"] == "up"
    assert (await client.get("/health/ready")).status_code == 200


async def test_a_full_disk_degrades_and_fails_readiness_when_named_critical(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    # Every file system has less than 100 % free: the disk check is down.
    settings = make_settings(var_dir=tmp_path / "var", health_disk_min_free_percent=100)
    async with running(create_app(settings)) as client:
        full = await client.get("/health")
        ready = await client.get("/health/ready")
    assert full.status_code == 200
    assert full.json()["status"] == "degraded"
    disk = full.json()["checks"]["disk"]
    assert disk["status"] == "down"
    assert disk["critical"] is False
    assert disk["error"].startswith("ResourceLowError: ")
    assert f"at {tmp_path}" in disk["error"]  # VAR_DIR's nearest existing folder
    assert "below HEALTH_DISK_MIN_FREE_PERCENT=100" in disk["error"]
    assert ready.status_code == 200  # not critical: the gateway stays in its load balancer

    critical = make_settings(
        var_dir=tmp_path,
        health_disk_min_free_percent=100,
        health_critical=["postgres", "disk"],
        health_memory_max_percent=0.001,
    )
    async with running(create_app(critical)) as client:
        ready = await client.get("/health/ready")
        full = await client.get("/health")
    assert ready.status_code == 503
    assert set(ready.json()["checks"]) == {"postgres", "disk"}
    memory = full.json()["checks"]["memory"]
    assert memory["status"] == "down"
    assert "above HEALTH_MEMORY_MAX_PERCENT=0.001" in memory["error"]


async def test_the_gateway_logs_its_backing_services_once_at_start(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(neo4j_uri="bolt://127.0.0.1:9")
    with caplog.at_level(logging.INFO, logger="switchyard.services.health"):
        async with running(create_app(settings)) as client:
            await client.get("/health/live")
            deadline = time.monotonic() + 30
            while not [r for r in caplog.records if r.message.startswith("backing services")]:
                assert time.monotonic() < deadline, "no start-up line within 30 s"
                await asyncio.sleep(0.05)
    [line] = [r for r in caplog.records if r.message.startswith("backing services at start")]
    assert line.levelno == logging.WARNING  # Neo4j refused
    assert "postgres" in line.reached  # type: ignore[attr-defined]
    assert "redis" in line.reached  # type: ignore[attr-defined]
    assert line.unreachable == ["neo4j"]  # type: ignore[attr-defined]
    assert "zhipu" in line.not_configured  # type: ignore[attr-defined]
    assert "could not reach neo4j (" in line.message


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
