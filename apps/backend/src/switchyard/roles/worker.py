"""The `worker` role: Celery on the work queues, running registered tasks."""

from __future__ import annotations

import os
import socket

from switchyard.platform import runtime
from switchyard.platform.broker import Broker
from switchyard.platform.registry import load_task_modules
from switchyard.platform.topology import WORK_QUEUES
from switchyard.platform.worker import configure_worker
from switchyard.roles.errors import RoleConfigurationError
from switchyard.settings import Settings


def require_task_backends(settings: Settings, role: str) -> None:
    for name, value in (
        ("DATABASE_URL", settings.database_url),
        ("CELERY_BROKER_URL", settings.celery_broker_url),
        ("REDIS_URL", settings.redis_url),
    ):
        if value is None:
            raise RoleConfigurationError(f"{name}: required by the {role} role")


def require_vector_server(settings: Settings, role: str) -> None:
    """Gateways search what workers ingest: separate processes share vectors only through a
    Chroma server (an embedded store per process would never see the others' writes)."""
    if not settings.chroma_host:
        raise RoleConfigurationError(
            f"CHROMA_HOST: required by the {role} role (gateways and workers share vectors "
            "through a Chroma server; only `standalone` runs with an embedded one)"
        )


def node_name() -> str:
    host = socket.gethostname()
    return f"worker-{os.getpid()}@{host}"


def run(settings: Settings, service_type: str = "worker") -> int:
    require_task_backends(settings, service_type)
    require_vector_server(settings, service_type)
    unknown = sorted(set(settings.worker_queues) - set(WORK_QUEUES))
    if unknown or not settings.worker_queues:
        raise RoleConfigurationError(
            f"WORKER_QUEUES: unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(WORK_QUEUES)}"
        )
    queues = settings.worker_queues
    broker = Broker.create(settings)
    assert broker is not None
    runtime.configure(settings, service_type)
    configure_worker(
        broker.celery,
        load_task_modules(settings.task_modules),
        settings.heartbeat_file("worker"),
        settings,
    )
    broker.publisher.declare_topology()
    broker.celery.worker_main(
        [
            "--quiet",  # no banner on stdout: logs are JSON lines on stderr
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={','.join(queues)}",
            f"--concurrency={settings.worker_concurrency}",
            f"--pool={settings.worker_pool}",
            f"--hostname={node_name()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
