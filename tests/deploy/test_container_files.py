"""The Dockerfile and the compose file, checked without a Docker engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
BACKEND_SERVICES = ("migrate", "api-gateway", "worker", "beat")
INFRASTRUCTURE = ("postgres", "redis", "rabbitmq", "neo4j", "minio", "chroma")


def test_dockerfile_passes_hadolint(repo_root: Path) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", "Dockerfile"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_role_as_non_root_under_an_init(repo_root: Path) -> None:
    lines = (repo_root / "Dockerfile").read_text().splitlines()
    instructions = [line.split(maxsplit=1) for line in lines if line and line[0].isupper()]
    final_stage = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    runtime = instructions[final_stage:]
    assert ["USER", "10001:10001"] in runtime
    assert ["ENTRYPOINT", '["dumb-init", "--", "switchyard", "run"]'] in runtime
    assert any(word == "HEALTHCHECK" for word, _ in runtime)
    assert sum(1 for word, _ in instructions if word == "FROM") >= 3


def test_dockerfile_installs_dependencies_before_the_source(repo_root: Path) -> None:
    text = (repo_root / "Dockerfile").read_text()
    assert text.index("uv sync --frozen --no-dev --no-install-workspace") < text.index(
        "COPY apps/backend/src"
    )


def test_compose_file_matches_the_compose_specification(repo_root: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
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
    assert ".env.backend" in (repo_root / ".gitignore").read_text().splitlines()
    keys = [
        line.split("=", 1)[0]
        for line in (repo_root / ".env.infrastructure").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert keys
    assert not [key for key in keys if any(word in key for word in ("PASS", "SECRET", "KEY"))]
