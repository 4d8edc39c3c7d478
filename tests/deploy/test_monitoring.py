"""The compose `monitoring` profile: Prometheus scrapes every role, Grafana's dashboard is
provisioned and asks only for metrics Switchyard exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import switchyard.api.metrics
import switchyard.platform.metrics
import switchyard.roles.backup
import switchyard.services.cache
import switchyard.services.llm
import switchyard.services.quotas
import switchyard.services.ratelimit
from switchyard.platform.metrics import BacklogCollector, BacklogSampler
from switchyard.settings import Settings
from tests.fixtures.servers import command

MONITORING = Path("apps/monitoring")
DASHBOARD = MONITORING / "grafana/dashboards/switchyard.json"
METRIC = re.compile(r"\bswitchyard_[a-z_]+")
# Imported for the metrics they define (in the process-wide registry).
METRIC_MODULES = (
    switchyard.api.metrics,
    switchyard.platform.metrics,
    switchyard.roles.backup,
    switchyard.services.cache,
    switchyard.services.llm,
    switchyard.services.quotas,
    switchyard.services.ratelimit,
)
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


@pytest.fixture(scope="module")
def dashboard(repo_root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((repo_root / DASHBOARD).read_text())
    return loaded


def exported_metric_names() -> set[str]:
    """Every metric family any role serves: the registry's, plus the worker's sampled ones."""
    assert len(METRIC_MODULES) == 7
    sampler = BacklogSampler(Settings(_env_file=None))
    sampler.queue_depths = {"default": 0.0}
    sampler.archive_size = 0.0
    sampler.sampled_at = 0.0
    families = [*REGISTRY.collect(), *BacklogCollector(sampler).collect()]
    return {family.name for family in families}


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_is_a_provisionable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "switchyard-overview"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], repo_root: Path
) -> None:
    provisioned = yaml.safe_load(
        (repo_root / MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in provisioned if source["type"] == "prometheus"}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]


def test_every_query_asks_for_metrics_switchyard_exports(dashboard: dict[str, Any]) -> None:
    exported = exported_metric_names()
    for expr in expressions(dashboard):
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
        asked = METRIC.findall(expr)
        assert asked, expr
        for name in asked:
            assert name in exported or base_name(name) in exported, f"{name} in {expr!r}"


def test_dashboard_shows_what_an_operator_needs_first(dashboard: dict[str, Any]) -> None:
    queries = "\n".join(expressions(dashboard))
    # request rate, latency, task outcomes, queue depth, dead letters
    assert "rate(switchyard_http_requests_total" in queries
    assert "histogram_quantile(0.95, sum by (le) (rate(switchyard_http_request_duration" in queries
    assert 'switchyard_worker_tasks_total{event=~"succeeded|failed|retried|dead_lettered"}' in (
        queries
    )
    assert "switchyard_queue_depth" in queries
    assert "switchyard_dead_letter_archive_size" in queries
    # loop lag, runs by state, tenants waiting, the host's limits
    assert "switchyard_worker_loop_lag_seconds" in queries
    assert "sum by (state) (switchyard_tenant_runs)" in queries
    assert 'switchyard_tenant_runs{state="waiting_for_capacity"}' in queries
    assert "switchyard_host_disk_free_ratio" in queries
    assert "switchyard_host_memory_used_ratio" in queries


def test_prometheus_scrapes_every_role_on_its_configured_port(repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / MONITORING / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    defaults = Settings(_env_file=None)
    gateway = jobs["api-gateway"]
    assert gateway["metrics_path"] == "/metrics"
    assert gateway["static_configs"][0]["targets"] == [f"api-gateway:{defaults.api_port}"]
    for role, port in (
        ("worker", defaults.worker_metrics_port),
        ("beat", defaults.beat_metrics_port),
    ):
        discovery = jobs[role]["dns_sd_configs"][0]
        assert discovery["names"] == [role]
        assert discovery["port"] == port


def test_compose_monitoring_profile_mounts_the_files_it_needs(
    compose: dict[str, Any], repo_root: Path
) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
        assert "healthcheck" in services[name], name
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (repo_root / source).exists(), volume
            else:
                assert source in compose["volumes"], volume
    mounts = {volume.split(":")[1] for volume in services["grafana"]["volumes"]}
    provider = yaml.safe_load(
        (repo_root / MONITORING / "grafana/provisioning/dashboards/switchyard.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] in mounts
    assert "/etc/grafana/provisioning" in mounts
    # The roles themselves stay outside the profile: `docker compose up` starts no monitoring.
    assert "profiles" not in services["api-gateway"]


RULES = MONITORING / "prometheus/rules"
RULE_TESTS = MONITORING / "prometheus/tests"


def promtool() -> str:
    return command("promtool", "promtool", "the rules are checked with it (Debian: prometheus)")


def test_alert_rules_are_valid_and_fire_as_their_tests_say(repo_root: Path) -> None:
    """`promtool check rules` on every rules file, `promtool test rules` on every test file,
    and every rules file has a test."""
    rules = sorted((repo_root / RULES).glob("*.yml"))
    tests = sorted((repo_root / RULE_TESTS).glob("*_test.yml"))
    assert rules
    assert {path.stem for path in rules} == {path.stem.removesuffix("_test") for path in tests}
    checked = subprocess.run(
        [promtool(), "check", "rules", *map(str, rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for test in tests:
        ran = subprocess.run(
            [promtool(), "test", "rules", test.name],
            cwd=test.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "SUCCESS" in ran.stdout


def test_alert_rules_ask_only_for_metrics_switchyard_exports(repo_root: Path) -> None:
    exported = {base_name(name) for name in exported_metric_names()}
    for path in (repo_root / RULES).glob("*.yml"):
        asked = {base_name(name) for name in METRIC.findall(path.read_text())}
        assert asked, path
        assert asked <= exported, f"{path.name}: {sorted(asked - exported)}"


def test_prometheus_loads_the_rules_compose_mounts(repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / MONITORING / "prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    compose = (repo_root / "docker-compose.yml").read_text()
    assert "./apps/monitoring/prometheus/rules:/etc/prometheus/rules:ro" in compose


def amtool() -> str:
    return command("amtool", "amtool", "the config is checked with it (Debian: alertmanager)")


ALERTMANAGER = MONITORING / "alertmanager/alertmanager.yml"


def test_alertmanager_config_is_valid_and_routes_every_severity(repo_root: Path) -> None:
    config = str(repo_root / ALERTMANAGER)
    checked = subprocess.run(
        [amtool(), "check-config", config], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for severity in ("critical", "warning", "info"):
        routed = subprocess.run(
            [
                amtool(),
                "config",
                "routes",
                "test",
                f"--config.file={config}",
                "alertname=SwitchyardRoleDown",
                f"severity={severity}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert routed.returncode == 0, routed.stdout + routed.stderr
        assert routed.stdout.strip() == "default"


def test_the_alerts_cover_what_an_operator_is_paged_for(repo_root: Path) -> None:
    rules = yaml.safe_load((repo_root / RULES / "operations.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "SwitchyardRoleDown",
        "SwitchyardWorkerLoopStalled",
        "SwitchyardQueueBacklog",
        "SwitchyardDeadLettersGrowing",
        "SwitchyardTenantWaitingForCapacity",
        "SwitchyardHighServerErrorRate",
        "SwitchyardDatabasePoolNearlyFull",
        "SwitchyardDiskAlmostFull",
        "SwitchyardMemoryHigh",
        "SwitchyardBackupStale",
        "SwitchyardBackupFailed",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_compose_monitoring_profile_runs_alertmanager_and_the_exporters(
    compose: dict[str, Any], repo_root: Path
) -> None:
    services = compose["services"]
    for name in ("alertmanager", "postgres-exporter", "redis-exporter"):
        assert services[name]["profiles"] == ["monitoring"], name
        # Only what each needs: none of them gets the backend's secrets file.
        assert "env_file" not in services[name], name
    mounts = services["alertmanager"]["volumes"]
    assert f"./{ALERTMANAGER}:/etc/alertmanager/alertmanager.yml:ro" in mounts
    config = yaml.safe_load((repo_root / MONITORING / "prometheus/prometheus.yml").read_text())
    [alertmanagers] = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in config["scrape_configs"]
        if "static_configs" in job
    }
    assert targets["postgres"].split(":")[0] in services
    assert targets["redis"].split(":")[0] in services
    # RabbitMQ serves its own metrics (the rabbitmq_prometheus plugin) on 15692.
    assert targets["rabbitmq"] == "rabbitmq:15692"
    assert "management" in services["rabbitmq"]["image"]
