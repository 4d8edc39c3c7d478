"""TASK_DELIVERY_LIMIT changed on a running deployment: RabbitMQ refuses the queues' new
arguments (406 PRECONDITION_FAILED), and with them every publish. The roles refuse to start
(exit 78, one line naming the setting and the queue), and a gateway that meets it later says
so in its health instead of reporting the broker up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kombu import Connection

from switchyard.api.app import create_app
from switchyard.platform import topology
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import SWITCHYARD, said, switchyard_env

pytestmark = pytest.mark.e2e

DEPLOYED_LIMIT = 5
CHANGED_LIMIT = 3


@pytest.fixture
def deployed(own_broker: str) -> str:
    """A vhost whose queues an earlier deployment declared with its own delivery limit."""
    with Connection(own_broker) as connection:
        topology.declare(connection, DEPLOYED_LIMIT)
    return own_broker


@pytest.mark.parametrize("role", ["api-gateway", "worker", "beat"])
def test_a_role_refuses_to_start_naming_the_setting_and_the_queue(
    role: str, deployed: str, task_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [SWITCHYARD, "run", role],
        cwd=tmp_path,
        env=switchyard_env(
            **{
                **task_env,
                "CELERY_BROKER_URL": deployed,
                "TASK_DELIVERY_LIMIT": str(CHANGED_LIMIT),
                "VAR_DIR": str(tmp_path),
                "WORKER_METRICS_PORT": "0",
                "BEAT_METRICS_PORT": "0",
            }
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 78, result.stderr[-3000:]
    line = next(line for line in said(result.stderr) if line.startswith("switchyard: config"))
    assert line.startswith("switchyard: configuration error: TASK_DELIVERY_LIMIT: the queue ")
    assert "'default'" in line
    assert "Traceback" not in result.stderr


async def test_health_names_the_mismatch_a_gateway_meets_at_its_first_publish(
    make_settings: SettingsFactory, deployed: str
) -> None:
    settings = make_settings(celery_broker_url=deployed, task_delivery_limit=CHANGED_LIMIT)
    async with running(create_app(settings)) as client:
        owner = await sign_up(client)
        refused = await client.post(
            "/api/v1/tasks/run",
            json={"task": "system.echo", "payload": {"message": "x"}},
            headers=owner.headers,
        )
        assert refused.status_code == 503
        health = (await client.get("/health")).json()
    rabbitmq = health["checks"]["rabbitmq"]
    assert rabbitmq["status"] == "down"
    assert "TASK_DELIVERY_LIMIT" in rabbitmq["error"]
    assert "'default'" in rabbitmq["error"]
