"""`pnpm check:services` (scripts/check-services.mjs) against the real local PostgreSQL, Redis
and RabbitMQ, and against closed and silent ports."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from tests.fixtures import names
from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import command, free_port, npm_install

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-services.mjs"


def node() -> str:
    return command("node", "Node.js", "`node` is not on PATH")


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
    assert rows["postgres"]["detail"].startswith(
        f"signed in as postgres to {names.DATABASE_PREFIX}"
    )
    assert rows["redis"] | {"latency_ms": 0} == rows["redis"] | {"latency_ms": 0, "status": "up"}
    assert rows["redis"]["detail"] == "PONG"
    assert rows["rabbitmq"]["detail"].startswith("logged in as guest, virtual host ")
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
    # A `packageManager` pin makes pnpm 10 and later fetch that exact pnpm (and fail offline).
    assert "packageManager" not in package


@pytest.fixture(scope="session")
def pnpm_releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pnpm")


@pytest.mark.parametrize("release", ["9", "10", "latest"])
def test_pnpm_check_services_runs_with_pnpm_9_10_and_the_current_release(
    pnpm_releases: Path, servers: dict[str, str], release: str
) -> None:
    prefix = pnpm_releases / release
    npm_install(prefix, f"pnpm@{release}")
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    done = subprocess.run(
        [str(prefix / "node_modules" / ".bin" / "pnpm"), "--silent", "check:services", "--json"],
        cwd=ROOT,
        env={**base, **servers},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {row["service"]: row["status"] for row in report["services"]} | {"gateway": "-"} == {
        "postgres": "up",
        "redis": "up",
        "rabbitmq": "up",
        "gateway": "-",
    }


def test_rabbitmq_logs_in_and_opens_the_vhost_or_says_auth_failed(
    tmp_path: Path, servers: dict[str, str], broker_url: str
) -> None:
    wrong_password = broker_url.replace("guest:guest@", "guest:not-the-password@")
    no_vhost = broker_url.rsplit("/", 1)[0] + "/no-such-vhost-" + uuid.uuid4().hex[:6]
    for url, detail in ((wrong_password, "ACCESS_REFUSED"), (no_vhost, "NOT_ALLOWED")):
        code, report, _ = check(tmp_path, "--json", **{**servers, "CELERY_BROKER_URL": url})
        row = by_service(report)["rabbitmq"]
        assert code == 1
        assert row["status"] == "auth failed"
        assert detail in row["detail"]
        assert "not-the-password" not in json.dumps(report)
    code, report, _ = check(
        tmp_path, "--json", **{**servers, "CELERY_BROKER_URL": f"amqp://127.0.0.1:{free_port()}//"}
    )
    assert by_service(report)["rabbitmq"]["status"] == "down"


PASSWORD_USERS = {"md5_user": "md5", "scram_user": "scram-sha-256", "plain_user": "password"}


@pytest.fixture(scope="module")
def password_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A PostgreSQL of this module's own whose users sign in with md5, SCRAM or a cleartext
    password (the shared server trusts everyone)."""
    import asyncio

    import asyncpg

    from switchyard.embedded.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("password-postgres"), port=free_port())
    with server:

        async def prepare() -> None:
            connection = await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres")
            try:
                for user, method in PASSWORD_USERS.items():
                    encryption = "md5" if method == "md5" else "scram-sha-256"
                    await connection.execute(f"SET password_encryption = '{encryption}'")
                    await connection.execute(f"CREATE ROLE {user} LOGIN PASSWORD 'pw-{user}'")
                hba = server.data_dir / "pg_hba.conf"
                rules = "".join(
                    f"host all {user} 127.0.0.1/32 {method}\n"
                    for user, method in PASSWORD_USERS.items()
                )
                hba.write_text(rules + hba.read_text())
                await connection.execute("SELECT pg_reload_conf()")
            finally:
                await connection.close()

        asyncio.run(prepare())
        yield server.port


@pytest.mark.parametrize("user", sorted(PASSWORD_USERS))
def test_postgres_signs_in_with_each_method_and_tells_a_refusal_from_down(
    tmp_path: Path, servers: dict[str, str], password_postgres: int, user: str
) -> None:
    def postgres(url: str) -> tuple[int, dict[str, Any]]:
        code, report, _ = check(tmp_path, "--json", **{**servers, "DATABASE_URL": url})
        return code, by_service(report)["postgres"]

    base = f"127.0.0.1:{password_postgres}"
    code, row = postgres(f"postgresql://{user}:pw-{user}@{base}/postgres")
    assert (code, row["status"]) == (0, "up"), row
    assert row["detail"] == f"signed in as {user} to postgres"
    code, row = postgres(f"postgresql+asyncpg://{user}:wrong-{user}@{base}/postgres")
    assert (code, row["status"]) == (1, "auth failed"), row
    assert "28P01" in row["detail"]
    assert f"wrong-{user}" not in json.dumps(row)
    code, row = postgres(f"postgresql://{user}:pw-{user}@{base}/no_such_database")
    assert (code, row["status"]) == (1, "auth failed"), row
    assert "3D000" in row["detail"]


@pytest.mark.e2e
def test_a_running_standalone_is_found_and_checked(
    start_role: Callable[..., RunningRole], checkout: Path
) -> None:
    """`make run`, then `pnpm check:services` in the same checkout: the embedded servers, on
    their ports of the day, are found (var/standalone.env) and checked, Redis as the broker."""
    standalone = start_role("standalone", free_port(), cwd=checkout)
    standalone.wait_healthy()
    code, report, _ = check(checkout, "--json")
    rows = by_service(report)
    assert code == 0, report
    assert {name: row["status"] for name, row in rows.items()} == {
        "postgres": "up",
        "redis": "up",
        "broker": "up",
        "chroma": "up",
        "gateway": "up",
    }
    assert {name for name, row in rows.items() if row["required"]} == {
        "postgres",
        "redis",
        "broker",
    }
    assert rows["gateway"]["detail"].startswith("standalone ")
    assert standalone.stop(timeout=90) == 0
    assert not (checkout / "var" / "standalone.env").exists()


def test_a_foreign_program_answering_200_is_not_the_gateway(
    tmp_path: Path, servers: dict[str, str]
) -> None:
    class Anything(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>my other app</html>")

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Anything)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        _, report, _ = check(tmp_path, "--json", **{**servers, "SWITCHYARD_API_URL": url})
    finally:
        other.shutdown()
    gateway = by_service(report)["gateway"]
    assert gateway["status"] == "down"
    assert "not a Switchyard health report" in gateway["detail"]
