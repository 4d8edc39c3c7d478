"""`pnpm check:services` (scripts/check-services.mjs) against the real local PostgreSQL, Redis
and RabbitMQ, and against closed and silent ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from tests.fixtures.servers import free_port, unavailable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-services.mjs"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        unavailable("Node.js", "`node` is not on PATH")
    assert found is not None
    return found


def check(cwd: Path, *args: str, **env: str) -> tuple[int, Any, float]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    started = time.monotonic()
    done = subprocess.run(
        [node(), str(SCRIPT), *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = json.loads(done.stdout) if "--json" in args and done.stdout else done.stdout
    return done.returncode, output, elapsed


def by_service(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["service"]: row for row in report["services"]}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def servers(database_url: URL, redis_url: str, broker_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url,
        "SWITCHYARD_API_URL": f"http://127.0.0.1:{free_port()}",
    }


def test_real_services_are_up_and_secrets_are_not_printed(
    tmp_path: Path, servers: dict[str, str]
) -> None:
    code, report, _ = check(tmp_path, "--json", **servers)
    assert code == 0, report
    rows = by_service(report)
    assert report["ok"] is True
    assert rows["postgres"]["status"] == "up"
    assert rows["postgres"]["detail"].startswith("TLS")
    assert rows["redis"] | {"latency_ms": 0} == rows["redis"] | {"latency_ms": 0, "status": "up"}
    assert rows["redis"]["detail"] == "PONG"
    assert rows["rabbitmq"]["detail"] == "AMQP 0-9-1 Connection.Start"
    assert rows["gateway"]["status"] == "down"  # nothing there, and not required
    assert rows["gateway"]["required"] is False
    assert "guest:guest" not in json.dumps(report)

    code, text, _ = check(tmp_path, **servers)
    assert code == 0
    assert text.splitlines()[0].split() == ["service", "address", "status", "latency", "detail"]
    assert "postgres *" in text


def test_closed_and_silent_ports_are_down_within_the_timeout(
    tmp_path: Path, servers: dict[str, str], silent_port: int
) -> None:
    closed = free_port()
    code, report, elapsed = check(
        tmp_path,
        "--json",
        "--timeout",
        "700",
        **{
            **servers,
            "REDIS_URL": f"redis://127.0.0.1:{closed}/0",
            "DATABASE_URL": f"postgresql://u:p@127.0.0.1:{silent_port}/db",
            "NEO4J_URI": f"bolt://127.0.0.1:{silent_port}",
            "MINIO_ENDPOINT": f"127.0.0.1:{closed}",
        },
    )
    rows = by_service(report)
    assert code == 1
    assert report["ok"] is False
    assert rows["redis"]["status"] == "down"
    assert rows["redis"]["detail"] == "ECONNREFUSED"
    assert rows["postgres"]["detail"] == "no answer within 700 ms"
    assert rows["neo4j"]["detail"] == "no answer within 700 ms"
    assert rows["neo4j"]["required"] is False
    assert rows["minio"]["status"] == "down"
    assert rows["rabbitmq"]["status"] == "up"
    assert elapsed < 10  # probes run at once, each bounded


def test_a_down_optional_service_does_not_fail_the_check(
    tmp_path: Path, servers: dict[str, str]
) -> None:
    code, report, _ = check(
        tmp_path, "--json", **servers, CHROMA_HOST="127.0.0.1", CHROMA_PORT=str(free_port())
    )
    assert code == 0
    assert by_service(report)["chroma"]["status"] == "down"
    code, report, _ = check(
        tmp_path,
        "--json",
        "--require",
        "postgres,chroma",
        **servers,
        CHROMA_HOST="127.0.0.1",
        CHROMA_PORT=str(free_port()),
    )
    assert code == 1


def test_env_files_are_read_and_the_environment_wins(
    tmp_path: Path, servers: dict[str, str]
) -> None:
    (tmp_path / ".env.infrastructure").write_text(
        f"# comment\nREDIS_URL=redis://127.0.0.1:{free_port()}/0\nCELERY_BROKER_URL='{servers['CELERY_BROKER_URL']}'\n"
    )
    (tmp_path / ".env.backend").write_text(
        f"DATABASE_URL={servers['DATABASE_URL']}\nREDIS_URL={servers['REDIS_URL']}\n"
    )
    code, report, _ = check(tmp_path, "--json")
    assert code == 0, report
    assert {r["service"] for r in report["services"] if r["status"] == "up"} == {
        "postgres",
        "redis",
        "rabbitmq",
    }
    code, report, _ = check(tmp_path, "--json", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1


def test_missing_required_settings_and_bad_arguments(tmp_path: Path) -> None:
    code, report, _ = check(tmp_path, "--json")
    assert code == 1
    assert by_service(report)["postgres"]["detail"] == "not configured: set DATABASE_URL"
    code, _, _ = check(tmp_path, "--frobnicate")
    assert code == 2


def test_package_json_names_the_script() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    assert package["scripts"]["check:services"] == "node scripts/check-services.mjs"
    assert package["packageManager"].startswith("pnpm@")
