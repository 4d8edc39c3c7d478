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

from switchyard import __version__
from switchyard.api.routes import health
from switchyard.platform.topology import WORK_QUEUES
from switchyard.roles import cli, worker
from switchyard.settings import Settings
from tests.fixtures.servers import unavailable

OVERLAYS = ("keda", "cpu", "production")
KUBERNETES_VERSION = "1.30.0"  # the oldest release still maintained when this was written
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
OPERATOR_KINDS = {"ServiceMonitor"}  # the Prometheus Operator's (components/prometheus-operator)
ROLES = ("api-gateway", "worker", "beat")
SETTINGS = {name.upper() for name in Settings.model_fields}


def render(
    repo_root: Path, tmp_path: Path, overlay: str, config: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay, with secrets.env made from the example as the
    documentation says (and `config` added to config.env)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl", "no kubectl (with its kustomize) on PATH")
    assert kubectl is not None
    tree = tmp_path / "kubernetes"
    shutil.copytree(repo_root / "deploy" / "kubernetes", tree)
    shutil.copy(tree / "base" / "secrets.env.example", tree / "base" / "secrets.env")
    with (tree / "base" / "config.env").open("a") as env:
        env.writelines(f"{name}={value}\n" for name, value in (config or {}).items())
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


def generated(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The ConfigMap or Secret generated as `name` (its name carries a hash of its content)."""
    (found,) = [
        obj
        for obj in objects
        if obj["kind"] == kind and obj["metadata"]["name"].startswith(f"{name}-")
    ]
    return found


def config_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    data = generated(objects, "ConfigMap", "switchyard-config")["data"]
    assert isinstance(data, dict)
    return data


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_core_object_matches_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for obj in objects:
        if obj["kind"] in KEDA_KINDS:
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            continue
        if obj["kind"] in OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = {obj["kind"] for obj in objects}
    assert {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds, kinds
    # No Job: a Job's pod template cannot change, so one per release had to be deleted by hand.
    assert "Job" not in kinds


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
    config = config_of(objects)
    secret_object = generated(objects, "Secret", "switchyard-secrets")
    secret = secret_object["data"]
    assert set(config) <= SETTINGS, set(config) - SETTINGS
    assert set(secret) <= SETTINGS, set(secret) - SETTINGS
    assert not set(config) & set(secret)
    names = {
        generated(objects, "ConfigMap", "switchyard-config")["metadata"]["name"],
        secret_object["metadata"]["name"],
    }
    workloads = list(by_kind(objects, "Deployment").values())
    assert len(workloads) == 3
    for workload in workloads:
        for container in all_containers(pod(workload)):
            named = {entry["name"] for entry in container.get("env", [])}
            assert named <= SETTINGS, named - SETTINGS
            sources = {next(iter(source.values()))["name"] for source in container["envFrom"]}
            assert sources == names
    # Every secret the production check asks for is in the example (and nothing else secret).
    example = dotenv_values(repo_root / "deploy" / "kubernetes" / "base" / "secrets.env.example")
    for name in ("DATABASE_URL", "JWT_SECRET", "METRICS_TOKEN", "DATA_SOURCE_KEYS"):
        assert name in example
    assert not [key for key in config if any(w in key for w in ("PASSWORD", "SECRET", "TOKEN"))]


def test_each_role_gets_its_service_type_and_the_image(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    image = (
        "registry.example.com/switchyard@sha256:" + "0" * 64
        if overlay == "production"
        else f"switchyard:{__version__}"
    )
    for role in ROLES:
        spec = pod(deployment(objects, role))
        (container,) = spec["containers"]
        assert {"name": "SERVICE_TYPE", "value": role} in container["env"]
        for each in all_containers(spec):
            assert each["image"] == image  # never :latest
            assert each["imagePullPolicy"] == "IfNotPresent"


def test_migrations_gate_the_rollout(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The gateway's init container migrates (the migrate role, locked); workers and beats wait
    until the schema is at their image's head (`switchyard wait-for-schema`)."""
    _, objects = rendered
    (migrate,) = pod(deployment(objects, "api-gateway"))["initContainers"]
    assert {"name": "SERVICE_TYPE", "value": "migrate"} in migrate["env"]
    assert "command" not in migrate  # the image's entrypoint: switchyard run $SERVICE_TYPE
    assert "wait-for-schema" in cli.main.commands
    for role in ("worker", "beat"):
        (wait,) = pod(deployment(objects, role))["initContainers"]
        assert wait["command"][:2] == ["switchyard", "wait-for-schema"]


def test_autoscaled_deployments_leave_the_count_to_their_autoscaler(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    autoscaled = {
        obj["spec"]["scaleTargetRef"]["name"]
        for obj in objects
        if obj["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}
    }
    assert autoscaled == {"switchyard-api-gateway", "switchyard-worker"}, overlay
    for name in autoscaled:
        assert "replicas" not in by_kind(objects, "Deployment")[name]["spec"]


def test_a_changed_setting_rolls_the_pods(repo_root: Path, tmp_path: Path) -> None:
    before = render(repo_root, tmp_path / "before", "keda")
    after = render(repo_root, tmp_path / "after", "keda", {"HEALTH_DISK_MIN_FREE_PERCENT": "10"})
    for role in ROLES:
        assert pod(deployment(before, role)) != pod(deployment(after, role)), role
    assert config_of(after)["HEALTH_DISK_MIN_FREE_PERCENT"] == "10"
    # KEDA reads the broker URL from the same generated Secret, by its hashed name.
    (auth,) = by_kind(after, "TriggerAuthentication").values()
    (reference,) = auth["spec"]["secretTargetRef"]
    assert reference["name"] == generated(after, "Secret", "switchyard-secrets")["metadata"]["name"]


def test_behind_an_ingress_the_proxies_are_trusted(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    proxies = config_of(objects)["TRUSTED_PROXIES"]
    assert Settings(_env_file=None, trusted_proxies=proxies).trusted_proxies == ["10.0.0.0/8"]


def test_gateways_and_workers_spread_over_nodes_and_zones(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for role in ("api-gateway", "worker"):
        workload = deployment(objects, role)
        spread = pod(workload)["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
        }
        for constraint in spread:
            assert constraint["labelSelector"] == workload["spec"]["selector"]
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"


def test_network_policies_admit_only_the_api_and_the_scrapes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    deny = policies["switchyard-default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "switchyard"}}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    gateway = policies["switchyard-api-gateway"]["spec"]
    assert gateway["podSelector"] == deployment(objects, "api-gateway")["spec"]["selector"]
    (rule,) = gateway["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    metrics = policies["switchyard-metrics"]["spec"]
    (rule,) = metrics["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (source,) = rule["from"]
    assert "namespaceSelector" in source
    # The named ports exist on the pods the policies select.
    for role in ("worker", "beat"):
        (container,) = pod(deployment(objects, role))["containers"]
        assert "metrics" in {port["name"] for port in container["ports"]}


def test_every_role_has_a_disruption_budget(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    budgets = by_kind(objects, "PodDisruptionBudget")
    for role in ROLES:
        selector = deployment(objects, role)["spec"]["selector"]
        assert budgets[f"switchyard-{role}"]["spec"]["selector"] == selector
    assert budgets["switchyard-beat"]["spec"]["minAvailable"] == 1


def test_the_production_example_scrapes_every_role_and_serves_the_api_over_tls(
    repo_root: Path, tmp_path: Path
) -> None:
    objects = render(repo_root, tmp_path, "production")
    services = by_kind(objects, "Service")
    monitors = by_kind(objects, "ServiceMonitor")
    assert set(monitors) == {f"switchyard-{role}" for role in ROLES}
    secret = generated(objects, "Secret", "switchyard-secrets")
    for role, monitor in monitors.items():
        selected = [
            service
            for service in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        ]
        assert selected, role
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for s in selected for p in s["spec"]["ports"]}
        credentials = endpoint["authorization"]["credentials"]
        assert credentials == {"name": secret["metadata"]["name"], "key": "METRICS_TOKEN"}
    (ingress,) = by_kind(objects, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": "switchyard-api-gateway",
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_pods_run_unprivileged_on_a_read_only_root_with_var_dir_writable(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """As the image's container tests run it (tests/deploy/test_image.py)."""
    _, objects = rendered
    var_dir = config_of(objects)["VAR_DIR"]
    for workload in by_kind(objects, "Deployment").values():
        spec = pod(workload)
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes["var"]
        for container in all_containers(spec):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert mounts == {var_dir: "var"}
            limits = container["resources"]["limits"]
            requests = container["resources"]["requests"]
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
    config = config_of(objects)
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
    config = config_of(objects)
    needs = float(config["WORKER_SHUTDOWN_GRACE_SECONDS"]) + worker.EXIT_AFTER_GRACE_SECONDS
    assert spec["terminationGracePeriodSeconds"] > needs
    assert (
        f"{spec['terminationGracePeriodSeconds']}s"
        == (compose["services"]["worker"]["stop_grace_period"])
    )


def test_no_probe_starts_a_process(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Probes are HTTP: the gateway's health routes, the worker's and beat's /health on their
    metrics ports (a `switchyard healthcheck` exec cost 0.4 s and 60-70 MiB per probe)."""
    _, objects = rendered
    defaults = Settings(_env_file=None)
    for role, port in (
        ("worker", defaults.worker_metrics_port),
        ("beat", defaults.beat_metrics_port),
    ):
        (container,) = pod(deployment(objects, role))["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    for workload in by_kind(objects, "Deployment").values():
        for container in pod(workload)["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert "exec" not in container.get(probe, {}), (container["name"], probe)


def test_two_beats_one_leads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    beat = deployment(objects, "beat")
    assert beat["spec"]["replicas"] == 2


def test_keda_scales_workers_on_every_work_queues_depth(repo_root: Path, tmp_path: Path) -> None:
    objects = render(repo_root, tmp_path, "keda")
    (scaled,) = by_kind(objects, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "switchyard-worker"
    triggers = scaled["spec"]["triggers"]
    assert [trigger["metadata"]["queueName"] for trigger in triggers] == list(WORK_QUEUES)
    config = config_of(objects)
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
    secret = generated(objects, "Secret", "switchyard-secrets")
    assert reference["name"] == secret["metadata"]["name"]
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


def test_a_nightly_cronjob_makes_one_verified_backup(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    cronjob = by_kind(objects, "CronJob")["switchyard-backup"]
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"  # never two dumps at once
    assert len(spec["schedule"].split()) == 5
    job = spec["jobTemplate"]["spec"]
    template = job["template"]["spec"]
    assert template["restartPolicy"] == "Never"
    (container,) = template["containers"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["SERVICE_TYPE"] == "backup"
    assert "BACKUP_SCHEDULE" not in env  # once per Job: its exit code is the outcome
    assert set(env) <= SETTINGS
    assert env["BACKUP_BUCKET"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert template["securityContext"]["runAsUser"] == 10001
    config = config_of(objects)
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {config["VAR_DIR"]}
