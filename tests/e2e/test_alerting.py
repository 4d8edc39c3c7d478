"""The alerts fire for real: Debian's `prometheus` scrapes a running gateway and worker with the
metrics token, evaluates the project's rules and sends to Debian's `prometheus-alertmanager`
(with the project's config); stopping the worker makes "worker down" reach Alertmanager.

The rules file is the project's, with the role-down alert's `for: 2m` shortened so the test
does not wait two minutes; everything else is as shipped."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import command, free_port
from tests.fixtures.tasks import start_worker_on

pytestmark = pytest.mark.e2e

MONITORING = Path("apps/monitoring")
TOKEN = "a-metrics-token-for-the-alerting-test"


def binary(name: str) -> str:
    why = "Debian's prometheus and prometheus-alertmanager (.ci/run installs them)"
    return command(name, name, why)


@contextmanager
def server(command: list[str], log: Path, ready: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{command[0]} not ready: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def poll(what: str, check: Callable[[], Any], within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} within {within:g} s"
        time.sleep(0.5)


def test_stopping_the_worker_makes_worker_down_reach_alertmanager(
    repo_root: Path,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    own_broker: str,
    tmp_path: Path,
) -> None:
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    gateway_port, worker_port = free_port(), free_port()
    prometheus_port, alertmanager_port = free_port(), free_port()

    gateway = start_role(
        "api-gateway",
        gateway_port,
        **{**task_env, "CELERY_BROKER_URL": own_broker, "METRICS_TOKEN": TOKEN},
    )
    gateway.wait_healthy()
    worker = start_worker_on(
        start_role,
        task_env,
        own_broker,
        tmp_path / "worker",
        METRICS_TOKEN=TOKEN,
        WORKER_METRICS_PORT=str(worker_port),
    )
    # Without the token, the worker's metrics are refused: the scrape must carry it. Its
    # /health answers a kubelet's probe without one (and says nothing more than ok).
    assert httpx.get(f"http://127.0.0.1:{worker_port}/metrics").status_code == 401
    probed = httpx.get(f"http://127.0.0.1:{worker_port}/health")
    assert (probed.status_code, probed.text) == (200, "ok\n")

    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN)
    rules = yaml.safe_load((repo_root / MONITORING / "prometheus/rules/operations.yml").read_text())
    [down] = [
        rule
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "SwitchyardRoleDown"
    ]
    assert down["for"] == "2m"
    down["for"] = "3s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    shipped = yaml.safe_load((repo_root / MONITORING / "prometheus/prometheus.yml").read_text())
    authorization = {"type": "Bearer", "credentials_file": str(token_file)}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": "api-gateway",
                "metrics_path": "/metrics",
                "authorization": authorization,
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
            },
            {
                "job_name": "worker",
                "authorization": authorization,
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
            },
        ],
    }
    # The shipped configuration names the same jobs, and tells how to give them the token.
    assert {job["job_name"] for job in shipped["scrape_configs"]} >= {"api-gateway", "worker"}
    assert (
        "credentials_file: /etc/prometheus/secrets/metrics-token"
        in (repo_root / MONITORING / "prometheus/prometheus.yml").read_text()
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    with (
        server(
            [
                alertmanager,
                f"--config.file={repo_root / MONITORING / 'alertmanager/alertmanager.yml'}",
                f"--storage.path={tmp_path / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                "--cluster.listen-address=",
            ],
            tmp_path / "alertmanager.log",
            f"http://127.0.0.1:{alertmanager_port}/-/ready",
        ),
        server(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            tmp_path / "prometheus.log",
            f"http://127.0.0.1:{prometheus_port}/-/ready",
        ),
    ):
        api = f"http://127.0.0.1:{prometheus_port}/api/v1"

        def targets_up() -> dict[str, str]:
            active = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active}
            return health if health == {"api-gateway": "up", "worker": "up"} else {}

        poll("both roles scraped with the token", targets_up, 60)
        # The worker's own figures arrived through the authorised scrape.
        lag = httpx.get(f"{api}/query", params={"query": "switchyard_host_memory_used_ratio"})
        assert {r["metric"]["job"] for r in lag.json()["data"]["result"]} == {
            "api-gateway",
            "worker",
        }

        assert worker.stop(signal.SIGTERM) == 0

        def worker_down_in_alertmanager() -> list[dict[str, Any]]:
            alerts = httpx.get(f"http://127.0.0.1:{alertmanager_port}/api/v2/alerts").json()
            return [a for a in alerts if a["labels"]["alertname"] == "SwitchyardRoleDown"]

        [alert] = poll("the worker-down alert in Alertmanager", worker_down_in_alertmanager, 90)
        assert alert["labels"]["job"] == "worker"
        assert alert["labels"]["instance"] == f"127.0.0.1:{worker_port}"
        assert alert["labels"]["severity"] == "critical"
        assert alert["status"]["state"] == "active"
        assert re.fullmatch(
            rf"worker at 127\.0\.0\.1:{worker_port} does not answer its scrape",
            alert["annotations"]["summary"],
        )
        # The gateway still answers: nothing fires for it.
        firing = httpx.get(f"{api}/alerts").json()["data"]["alerts"]
        assert {a["labels"].get("job") for a in firing if a["state"] == "firing"} == {"worker"}
