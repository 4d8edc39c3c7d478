"""deploy/kubernetes: rendered by kustomize (`kubectl kustomize`) as a user applies it, every core
object validated against the Kubernetes schemas (kubernetes-validate), and checked against what
the roles read and do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dotenv import dotenv_values

from switchyard.api.routes import health
from switchyard.platform.topology import WORK_QUEUES
from switchyard.roles import healthcheck, worker
from switchyard.settings import Settings
from tests.fixtures.servers import unavailable

OVERLAYS = ("keda", "cpu")
KUBERNETES_VERSION = "1.30.0"  # the oldest release still maintained when this was written
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
ROLES = ("api-gateway", "worker", "beat")
SETTINGS = {name.upper() for name in Settings.model_fields}


def render(repo_root: Path, tmp_path: Path, overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay, with secrets.env made from the example as the
    documentation says."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl", "no kubectl (with its kustomize) on PATH")
    assert kubectl is not None
    tree = tmp_path / "kubernetes"
    shutil.copytree(repo_root / "deploy" / "kubernetes", tree)
    shutil.copy(tree / "base" / "secrets.env.example", tree / "base" / "secrets.env")
    result = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(
    request: pytest.FixtureRequest, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[dict[str, Any]]]:
    overlay = str(request.param)
    return overlay, render(repo_root, tmp_path_factory.mktemp(overlay), overlay)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def deployment(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return by_kind(objects, "Deployment")[f"switchyard-{role}"]


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def test_every_core_object_matches_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for obj in objects:
        if obj["kind"] in KEDA_KINDS:
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = sorted({obj["kind"] for obj in objects})
    assert {"ConfigMap", "Secret", "Job", "Deployment", "Service"} <= set(kinds), kinds


def test_a_schema_violation_is_caught(repo_root: Path, tmp_path: Path) -> None:
    """The validation above can fail: a misspelt field of a rendered Deployment is refused."""
    objects = render(repo_root, tmp_path, "cpu")
    broken = deployment(objects, "worker")
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_rendered_environment_names_only_settings_that_exist(
    rendered: tuple[str, list[dict[str, Any]]], repo_root: Path
) -> None:
    _, objects = rendered
    config = by_kind(objects, "ConfigMap")["switchyard-config"]["data"]
    secret = by_kind(objects, "Secret")["switchyard-secrets"]["data"]
    assert set(config) <= SETTINGS, set(config) - SETTINGS
    assert set(secret) <= SETTINGS, set(secret) - SETTINGS
    assert not set(config) & set(secret)
    workloads = [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]
    assert len(workloads) == 4
    for workload in workloads:
        for container in pod(workload)["containers"]:
            named = {entry["name"] for entry in container.get("env", [])}
            assert named <= SETTINGS, named - SETTINGS
            sources = {next(iter(source.values()))["name"] for source in container["envFrom"]}
            assert sources == {"switchyard-config", "switchyard-secrets"}
    # Every secret the production check asks for is in the example (and nothing else secret).
    example = dotenv_values(repo_root / "deploy" / "kubernetes" / "base" / "secrets.env.example")
    for name in ("DATABASE_URL", "JWT_SECRET", "METRICS_TOKEN", "DATA_SOURCE_KEYS"):
        assert name in example
    assert not [key for key in config if any(w in key for w in ("PASSWORD", "SECRET", "TOKEN"))]


def test_each_role_gets_its_service_type_and_the_image(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    jobs = by_kind(objects, "Job")
    assert list(jobs) == ["switchyard-migrate"]
    workloads = {"migrate": jobs["switchyard-migrate"]}
    workloads |= {role: deployment(objects, role) for role in ROLES}
    for role, workload in workloads.items():
        (container,) = pod(workload)["containers"]
        assert container["image"] == "switchyard:latest"
        assert {"name": "SERVICE_TYPE", "value": role} in container["env"]


def test_pods_run_unprivileged_on_a_read_only_root_with_var_dir_writable(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """As the image's container tests run it (tests/deploy/test_image.py)."""
    _, objects = rendered
    var_dir = by_kind(objects, "ConfigMap")["switchyard-config"]["data"]["VAR_DIR"]
    workloads = [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]
    for workload in workloads:
        spec = pod(workload)
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["runAsNonRoot"] is True
        (container,) = spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts == {var_dir: "var"}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes["var"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert set(limits) == set(requests) == {"cpu", "memory"}


def test_gateway_probes_use_the_health_endpoints_and_the_service_reaches_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    gateway = deployment(objects, "api-gateway")
    (container,) = pod(gateway)["containers"]
    paths = {route.path for route in health.router.routes}  # type: ignore[attr-defined]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {"/health/ready", "/health/live"} <= paths
    config = by_kind(objects, "ConfigMap")["switchyard-config"]["data"]
    assert container["ports"] == [{"name": "http", "containerPort": int(config["API_PORT"])}]
    service = by_kind(objects, "Service")["switchyard-api-gateway"]
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    grace = pod(gateway)["terminationGracePeriodSeconds"]
    assert grace > int(config["API_SHUTDOWN_GRACE_SECONDS"]) + 5  # + the preStop sleep


def test_worker_termination_grace_matches_the_workers_and_compose(
    rendered: tuple[str, list[dict[str, Any]]], compose: dict[str, Any]
) -> None:
    _, objects = rendered
    spec = pod(deployment(objects, "worker"))
    config = by_kind(objects, "ConfigMap")["switchyard-config"]["data"]
    needs = float(config["WORKER_SHUTDOWN_GRACE_SECONDS"]) + worker.EXIT_AFTER_GRACE_SECONDS
    assert spec["terminationGracePeriodSeconds"] > needs
    assert (
        f"{spec['terminationGracePeriodSeconds']}s"
        == (compose["services"]["worker"]["stop_grace_period"])
    )
    (container,) = spec["containers"]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["switchyard", "healthcheck"]
        assert container[probe]["timeoutSeconds"] > healthcheck.DEADLINE_SECONDS


def test_two_beats_one_leads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    beat = deployment(objects, "beat")
    assert beat["spec"]["replicas"] == 2
    (container,) = pod(beat)["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["switchyard", "healthcheck"]


def test_keda_scales_workers_on_every_work_queues_depth(repo_root: Path, tmp_path: Path) -> None:
    objects = render(repo_root, tmp_path, "keda")
    (scaled,) = by_kind(objects, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "switchyard-worker"
    triggers = scaled["spec"]["triggers"]
    assert [trigger["metadata"]["queueName"] for trigger in triggers] == list(WORK_QUEUES)
    config = by_kind(objects, "ConfigMap")["switchyard-config"]["data"]
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["mode"] == "QueueLength"
        # A worker for each WORKER_CONCURRENCY ready messages: one process's worth of work.
        assert trigger["metadata"]["value"] == config["WORKER_CONCURRENCY"]
        (auth,) = [
            obj
            for obj in by_kind(objects, "TriggerAuthentication").values()
            if obj["metadata"]["name"] == trigger["authenticationRef"]["name"]
        ]
    (reference,) = auth["spec"]["secretTargetRef"]
    assert reference["parameter"] == "host"
    secret = by_kind(objects, "Secret")[reference["name"]]
    assert reference["key"] == "CELERY_BROKER_URL"
    assert reference["key"] in secret["data"]
    # KEDA owns the worker's HPA: none of ours competes with it (the gateway's stays).
    autoscalers = by_kind(objects, "HorizontalPodAutoscaler")
    assert list(autoscalers) == ["switchyard-api-gateway"]


def test_without_keda_an_hpa_scales_workers_on_cpu(repo_root: Path, tmp_path: Path) -> None:
    objects = render(repo_root, tmp_path, "cpu")
    assert not [obj for obj in objects if obj["kind"] in KEDA_KINDS]
    autoscaler = by_kind(objects, "HorizontalPodAutoscaler")["switchyard-worker"]
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "switchyard-worker",
    }
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
