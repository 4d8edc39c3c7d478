from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.fixtures.processes import SWITCHYARD, RunningRole, switchyard_env
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.e2e


def test_gateway_process_serves_health_api_and_problems_then_stops_cleanly(
    start_role: Callable[..., RunningRole], database_url: URL, tmp_path: Path
) -> None:
    port = free_port()
    env = {"DATABASE_URL": database_url.render_as_string(hide_password=False)}
    gateway = start_role("api-gateway", port, **env)
    health = gateway.wait_healthy()
    assert health.json()["checks"]["postgres"]["status"] == "up"
    assert health.json()["service_type"] == "api-gateway"

    info = httpx.get(f"{gateway.base_url}/api/v1/", headers={"X-Request-ID": "e2e-root"})
    assert info.json()["service_type"] == "api-gateway"
    assert info.headers["x-request-id"] == "e2e-root"

    missing = httpx.get(f"{gateway.base_url}/api/v1/missing", headers={"X-Request-ID": "e2e-404"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["request_id"] == "e2e-404"

    wrong = httpx.post(f"{gateway.base_url}/health/live")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"

    check = subprocess.run(
        [SWITCHYARD, "healthcheck"],
        cwd=tmp_path,
        env=switchyard_env(SERVICE_TYPE="api-gateway", API_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr

    assert gateway.stop(signal.SIGTERM) == 0
    assert gateway.leftovers() == []

    records = [json.loads(line) for line in gateway.stderr().splitlines() if line.strip()]
    for_root = [r for r in records if r.get("request_id") == "e2e-root"]
    assert [r["path"] for r in for_root] == ["/api/v1/"]
    for_missing = [r for r in records if r.get("path") == "/api/v1/missing"]
    assert for_missing
    assert {r.get("request_id") for r in for_missing} == {"e2e-404"}
    assert all(r["service_type"] == "api-gateway" for r in records)
