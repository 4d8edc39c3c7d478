"""The image itself: every role as a container (`--network host`, read-only root filesystem,
VAR_DIR alone writable) against the test servers, as a user runs it."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from switchyard import __version__
from tests.fixtures.containers import Container, docker, json_lines, run_once, start, volume
from tests.fixtures.messaging import local_vhost
from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.processes import NO_VECTOR_SERVER, said
from tests.fixtures.servers import free_port, unavailable

# 600 s: the first test may build the image when it is missing (.ci/run builds it first).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PASSWORD = "correct-horse-battery-staple-9"
VALID_ROLES = "valid roles: api-gateway, worker, beat, migrate, standalone, backup"
# What compose and the README give a worker: WORKER_SHUTDOWN_GRACE_SECONDS (30) + hand-back.
WORKER_STOP_TIMEOUT = 45
HEAD = "0017"
FINAL_STATES = {"succeeded", "failed", "cancelled", "dead_lettered"}


def database_env(url: URL) -> dict[str, str]:
    return {"DATABASE_URL": url.render_as_string(hide_password=False)}


async def revision(url: URL) -> str | None:
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        value = await connection.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    return str(value) if value is not None else None


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.3)


class Api:
    """A signed-up tenant owner's client of a gateway container."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=10)
        email = f"owner-{uuid.uuid4().hex[:10]}@example.com"
        registered = self.client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": PASSWORD, "tenant_name": "Container Co"},
        )
        assert registered.status_code == 201, registered.text
        signed_in = self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert signed_in.status_code == 200, signed_in.text
        tokens = signed_in.json()
        self.client.headers["Authorization"] = f"Bearer {tokens['access_token']}"

    def submit(self, task: str, payload: dict[str, object]) -> str:
        accepted = self.client.post("/api/v1/tasks/run", json={"task": task, "payload": payload})
        assert accepted.status_code == 202, accepted.text
        return str(accepted.json()["task_id"])

    def run(self, task_id: str) -> dict[str, object]:
        response = self.client.get(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body

    def wait_state(self, task_id: str, state: str, timeout: float = 60) -> dict[str, object]:
        def reached() -> dict[str, object] | None:
            run = self.run(task_id)
            if run["state"] == state:
                return run
            if run["state"] in FINAL_STATES:
                raise AssertionError(f"run {task_id} ended {run['state']}, not {state}: {run}")
            return None

        return wait_for(reached, timeout, f"run {task_id} {state}")  # type: ignore[no-any-return]


@dataclass
class Stack:
    env: dict[str, str]
    database: URL
    gateway: Container
    workers: list[Container]
    beat: Container
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
async def stack_env(
    create_database: DatabaseFactory, redis_url: str
) -> AsyncIterator[tuple[dict[str, str], URL]]:
    """Settings of a deployment of its own: database, RabbitMQ vhost, Redis namespace."""
    database = await create_database()
    with local_vhost() as broker:
        if broker is None:
            unavailable("RabbitMQ", "rabbitmqctl cannot add a vhost for the containers")
        assert broker is not None
        yield (
            {
                **database_env(database),
                **NO_VECTOR_SERVER,
                "REDIS_URL": redis_url,
                "CACHE_NAMESPACE": f"switchyard-image-{uuid.uuid4().hex[:8]}",
                "CELERY_BROKER_URL": broker,
                "WORKER_METRICS_PORT": "0",
                "BEAT_METRICS_PORT": "0",
                "WORKER_CONCURRENCY": "4",
                "BEAT_TICK_SECONDS": "0.5",
                "LOG_LEVEL": "INFO",
            },
            database,
        )


@pytest.fixture(scope="module")
def stack(image: str, stack_env: tuple[dict[str, str], URL]) -> Stack:
    """migrate to completion, then a gateway, two workers and a beat, all healthy."""
    env, database = stack_env
    migrated = run_once(image, "migrate", env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    port = free_port()
    # As compose runs them: no DATA_SOURCE_KEYS or JWT_SECRET, the generated ones on a shared
    # volume (LOCAL_SECRETS_DIR), so the workers decrypt what the gateway encrypted.
    secrets = volume()
    shared = ["-v", f"{secrets}:/app/secrets"]
    env = {**env, "LOCAL_SECRETS_DIR": "/app/secrets", "DATA_SOURCE_ALLOW_LOCAL_HOSTS": "true"}
    gateway = start(image, "api-gateway", {**env, "API_PORT": str(port)}, *shared)
    workers = [start(image, "worker", env, "--health-interval", "2s", *shared) for _ in range(2)]
    beat = start(image, "beat", env, "--health-interval", "2s", *shared)
    # The gateway's health comes from the image's own HEALTHCHECK, its interval unchanged.
    for container in (gateway, *workers, beat):
        container.wait_health(timeout=90)
    # The containers go at the end of the session (the `image` fixture removes them).
    return Stack(env, database, gateway, workers, beat, port)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    """One tenant for the stack's tests (sign-ins from one address are rate limited)."""
    return Api(stack.base)


async def test_migrate_exits_zero_twice_and_two_at_once(
    image: str, create_database: DatabaseFactory
) -> None:
    first = await create_database()
    env = {**database_env(first), **NO_VECTOR_SERVER}
    for _ in range(2):
        result = run_once(image, "migrate", env)
        assert result.returncode == 0, result.stderr[-3000:]
        messages = [record["message"] for record in json_lines(result.stderr, "migrate")]
        assert "database migrated" in messages
    assert await revision(first) == HEAD

    fresh = await create_database()
    env = {**database_env(fresh), **NO_VECTOR_SERVER}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_once(image, "migrate", env), range(2)))
    assert [result.returncode for result in results] == [0, 0], [r.stderr[-2000:] for r in results]
    assert await revision(fresh) == HEAD


def test_a_bad_role_exits_2_naming_the_valid_roles(image: str) -> None:
    result = run_once(image, "scheduler", {})
    assert result.returncode == 2
    assert said(result.stderr) == [f"switchyard: unknown role 'scheduler'; {VALID_ROLES}"]


def test_a_read_only_root_without_a_writable_var_dir_exits_78_naming_it(image: str) -> None:
    """The documented tmpfs at VAR_DIR left out: one line naming VAR_DIR, not a traceback."""
    result = run_once(image, "api-gateway", NO_VECTOR_SERVER, "--read-only", read_only_var=False)
    assert result.returncode == 78, result.stderr[-2000:]
    assert said(result.stderr) == [
        "switchyard: configuration error: VAR_DIR: /app/var is not writable (Read-only file "
        "system) and no temporary directory is; on a read-only root, mount a writable volume "
        "or tmpfs at VAR_DIR"
    ]
    assert "Traceback" not in result.stderr


def test_production_with_the_example_secrets_exits_78_naming_each(
    image: str, repo_root: Path
) -> None:
    result = run_once(
        image,
        "api-gateway",
        {"ENVIRONMENT": "production"},
        "--env-file",
        str(repo_root / ".env.backend.example"),
    )
    assert result.returncode == 78, result.stderr
    named = [line.split(":")[2].strip() for line in said(result.stderr)]
    assert named == [
        "JWT_SECRET",
        "DATABASE_URL",
        "FIRST_SUPERUSER_PASSWORD",
        "CELERY_BROKER_URL",
        "METRICS_TOKEN",
        "DATA_SOURCE_KEYS",
    ]
    assert "Traceback" not in result.stderr


def test_every_role_runs_as_the_unprivileged_user_on_a_read_only_root(stack: Stack) -> None:
    for container in (stack.gateway, *stack.workers, stack.beat):
        assert container.exec("id", "-u").stdout.strip() == "10001"
        assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
        denied = container.exec("touch", "/app/written")
        assert denied.returncode != 0
        assert "Read-only file system" in denied.stderr
        # The one writable place holds what the role writes: its heartbeat, its temporary files.
        listing = container.exec("ls", "/app/var").stdout.split()
        assert "tmp" in listing


def test_gateway_is_healthy_by_the_images_healthcheck_and_serves_health(stack: Stack) -> None:
    assert stack.gateway.health() == "healthy"
    assert stack.gateway.inspect("{{.Config.Healthcheck.Test}}") == "[CMD switchyard healthcheck]"
    health = httpx.get(f"{stack.base}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["service_type"] == "api-gateway"
    ready = httpx.get(f"{stack.base}/health/ready", timeout=10).json()
    assert ready["checks"]["postgres"]["status"] == "up"
    # The console's pages and script ship in the package (no CDN, no build step).
    assert "/console/assets/console.js" in httpx.get(f"{stack.base}/console", timeout=10).text
    script = httpx.get(f"{stack.base}/console/assets/console.js", timeout=10)
    assert script.status_code == 200
    assert "X-CSRF-Token" in script.text


def test_worker_containers_on_one_host_have_their_own_node_names(stack: Stack) -> None:
    names = []
    for worker in stack.workers:
        ready = [
            str(record["message"])
            for record in worker.log_records()
            if str(record.get("message", "")).endswith(" ready.")
        ]
        assert len(ready) == 1, ready
        names.append(ready[0].removesuffix(" ready."))
    assert len(set(names)) == 2, names
    # Both answer their own control ping (the image's healthcheck pings each node by name).
    for worker in stack.workers:
        assert worker.exec("switchyard", "healthcheck").returncode == 0


def test_a_signed_up_users_run_succeeds_on_a_worker_container(stack: Stack, api: Api) -> None:
    task_id = api.submit("system.echo", {"message": "from a container"})
    run = api.wait_state(task_id, "succeeded")
    assert run["result"] == {"message": "from a container"}
    assert run["attempts"] == 1


def test_workers_decrypt_the_data_source_urls_the_gateway_encrypted(stack: Stack, api: Api) -> None:
    """A connectivity test runs on a worker container and reads the URL the gateway container
    encrypted with the generated development key: one key, on the shared volume."""
    url = stack.database.set(drivername="postgresql").render_as_string(hide_password=False)
    source = api.client.post("/api/v1/data-sources", json={"name": "ledger", "url": url})
    assert source.status_code == 201, source.text
    started = api.client.post(f"/api/v1/data-sources/{source.json()['id']}/test")
    assert started.status_code == 202, started.text
    run = api.wait_state(str(started.json()["task_id"]), "succeeded")
    result = run["result"]
    assert isinstance(result, dict)
    assert result["ok"] is True, result
    assert result["data_source_id"] == source.json()["id"]
    keys = [c.exec("ls", "/app/secrets").stdout.split() for c in (stack.gateway, *stack.workers)]
    assert all("data-source.key" in listed for listed in keys), keys


def test_beat_container_fires_a_scheduled_definition(stack: Stack, api: Api) -> None:
    name = f"container-tick-{uuid.uuid4().hex[:6]}"
    created = api.client.post(
        "/api/v1/tasks/register",
        json={
            "name": name,
            "task": "system.echo",
            "payload": {"message": "tick"},
            "schedule": {"every_seconds": 1},
        },
    )
    assert created.status_code == 201, created.text

    def fired() -> list[dict[str, object]]:
        listed = api.client.get("/api/v1/tasks/", params={"task": "system.echo"}).json()
        return [
            run
            for run in listed["items"]
            if run["submitted_by"] == "beat" and run["state"] == "succeeded"
        ]

    runs = wait_for(fired, 30, "a scheduled run that succeeded")
    assert all(run["payload"] == {"message": "tick"} for run in runs)
    api.client.patch(f"/api/v1/tasks/definitions/{name}", json={"enabled": False})


def test_docker_stop_lets_a_worker_finish_its_run_once_then_exit_zero(
    stack: Stack, api: Api
) -> None:
    """Last of the stack's tests: it stops the workers (then the beat and the gateway) and reads
    every role's log, shutdown lines included."""
    task_id = api.submit("system.sleep", {"seconds": 6})
    api.wait_state(task_id, "started", timeout=30)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        took = list(pool.map(lambda w: w.stop(WORKER_STOP_TIMEOUT), stack.workers))
    assert [worker.exit_code() for worker in stack.workers] == [0, 0]
    # The stop waited for the run (about 6 s from its start), well within the grace period.
    assert 3 < max(took) < WORKER_STOP_TIMEOUT - 5, took
    run = api.run(task_id)
    assert run["state"] == "succeeded", run
    assert run["attempts"] == 1
    for container in (stack.beat, stack.gateway):
        container.stop(30)
        assert container.exit_code() == 0
    for container in (stack.gateway, *stack.workers, stack.beat):
        records = container.log_records()
        assert records, container.role
        assert {record.get("service_type") for record in records} == {container.role}
    shutdown = [
        record
        for worker in stack.workers
        for record in worker.log_records()
        if record["message"] == "worker: Warm shutdown (MainProcess)"
    ]
    assert len(shutdown) == 2
    gateway_messages = [record["message"] for record in stack.gateway.log_records()]
    assert "Application shutdown complete." in gateway_messages


def test_standalone_runs_its_embedded_servers_as_the_unprivileged_user(image: str) -> None:
    port = free_port()
    standalone = start(image, "standalone", {"API_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            if standalone.status() != "running":
                raise AssertionError(standalone.logs()[1][-3000:]) from None
            return False

    wait_for(ready, 120, "standalone ready")
    assert standalone.exec("id", "-u").stdout.strip() == "10001"
    api = Api(base)
    task_id = api.submit("system.echo", {"message": "embedded"})
    assert api.wait_state(task_id, "succeeded")["result"] == {"message": "embedded"}
    stdout, _ = standalone.logs()
    assert "Switchyard standalone" in stdout  # the banner, for the person who started it
    assert standalone.stop(WORKER_STOP_TIMEOUT) < WORKER_STOP_TIMEOUT
    assert standalone.exit_code() == 0
    roles = {record.get("service_type") for record in standalone.log_records()}
    assert {"standalone", "worker", "beat"} <= roles


def test_the_image_is_labelled_and_carries_the_bill_of_materials_of_what_it_installed(
    image: str,
) -> None:
    """OCI labels (title, version, revision, source, licence) and /app/sbom.cdx.json, which
    lists exactly the distributions installed in the image's environment (the project aside)."""
    inspected = json.loads(docker("image", "inspect", image).stdout)
    labels = inspected[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "switchyard"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == __version__
    for name in ("revision", "source", "description"):
        assert labels[f"org.opencontainers.image.{name}"], name
    listed = docker(
        "run",
        "--rm",
        "--entrypoint",
        "/app/.venv/bin/python",
        image,
        "-c",
        "import json, importlib.metadata as m;"
        "print(json.dumps({'sbom': json.load(open('/app/sbom.cdx.json')),"
        "'installed': sorted(d.metadata['Name'] for d in m.distributions())}))",
    )
    found = json.loads(listed.stdout)
    sbom = found["sbom"]
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.5")

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    components = {canonical(c["name"]) for c in sbom["components"]}
    installed = {canonical(name) for name in found["installed"]} - {"switchyard"}
    assert components == installed
    for component in sbom["components"]:
        assert component["purl"] == f"pkg:pypi/{component['name']}@{component['version']}"


async def test_the_backup_role_makes_a_verified_backup_on_a_read_only_root(
    image: str, create_database: DatabaseFactory
) -> None:
    """The image's own PostgreSQL tools (the embedded package's, newer than the test server)
    dump, restore into a scratch database and verify; the archive is built under VAR_DIR."""
    fresh = await create_database()
    migrated = run_once(image, "migrate", {**database_env(fresh), **NO_VECTOR_SERVER})
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    # CHROMA_HOST empty: the vectors of an embedded store under VAR_DIR (none yet).
    result = run_once(image, "backup", {**database_env(fresh), "CHROMA_HOST": ""}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [made] = [r for r in json_lines(result.stderr, "backup") if r["message"] == "backup made"]
    assert made["verified"] is True
    assert str(made["location"]).startswith("/app/var/backups")
