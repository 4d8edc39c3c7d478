"""The `worker` role: WORKER_PROCESSES Celery workers on the work queues, under a supervisor.

`switchyard run worker` is the supervisor: it starts the worker processes (`switchyard run
worker` again, with SWITCHYARD_WORKER_PROCESS set), replaces one that dies, serves their
merged metrics and writes the role's heartbeat. Each worker process runs up to
WORKER_CONCURRENCY runs at once as coroutines on its own event loop (`platform.runtime`)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from types import FrameType

from switchyard.errors import RoleConfigurationError
from switchyard.platform.heartbeat import read_heartbeat, write_heartbeat
from switchyard.platform.topology import WORK_QUEUES
from switchyard.roles import healthcheck
from switchyard.services import email
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

PROCESS_ENV = "SWITCHYARD_WORKER_PROCESS"
EXIT_CONFIG = 78
EXIT_LOOP_BLOCKED = 70  # platform.runtime: a run blocked the loop past its time limit
WATCH_SECONDS = 0.5
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
# A process that lived this long before it died is restarted without backing off.
HEALTHY_LIFETIME_SECONDS = 60.0
# After its grace period a process hands its runs back and exits; it is killed only if it is
# still there this long after. Grace + this margin stays within the 45 s stop timeout that
# compose, the README and the Kubernetes manifests give a worker.
EXIT_AFTER_GRACE_SECONDS = 10.0


def task_backend_problems(settings: Settings, role: str) -> list[str]:
    return [
        f"{name}: required by the {role} role"
        for name, value in (
            ("DATABASE_URL", settings.database_url),
            ("CELERY_BROKER_URL", settings.celery_broker_url),
            ("REDIS_URL", settings.redis_url),
        )
        if value is None
    ]


def vector_server_problems(settings: Settings, role: str) -> list[str]:
    """Gateways search what workers ingest: separate processes share vectors only through a
    Chroma server (an embedded store per process would never see the others' writes)."""
    if settings.chroma_host:
        return []
    return [
        f"CHROMA_HOST: required by the {role} role (gateways and workers share vectors "
        "through a Chroma server; only `standalone` runs with an embedded one)"
    ]


def require(*problems: list[str]) -> None:
    """Refuse to start, naming every problem at once."""
    lines = [line for found in problems for line in found]
    if lines:
        raise RoleConfigurationError(*lines)


def node_name(index: int) -> str:
    """Unique per process wherever it runs: containers on the host network share a hostname,
    and each container numbers its processes from 1 (Celery's control replies and pidbox queues
    are per node name)."""
    return f"worker{index}-{secrets.token_hex(4)}@{socket.gethostname()}"


def process_heartbeat(settings: Settings, index: int) -> Path:
    return settings.heartbeat_file(f"worker-{index}")


def run(settings: Settings, service_type: str = "worker") -> int:
    unknown = sorted(set(settings.worker_queues) - set(WORK_QUEUES))
    queues = (
        [
            f"WORKER_QUEUES: unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(WORK_QUEUES)}"
        ]
        if unknown or not settings.worker_queues
        else []
    )
    require(
        task_backend_problems(settings, service_type),
        vector_server_problems(settings, service_type),
        queues,
    )
    index = os.environ.get(PROCESS_ENV)
    if index is not None:
        return run_process(settings, int(index), service_type)
    if "WORKER_POOL" in os.environ:
        logger.warning(
            "WORKER_POOL is ignored: a worker process runs WORKER_CONCURRENCY runs on one event "
            "loop; use WORKER_PROCESSES for more processes"
        )
    email.announce(settings)
    return Supervisor(settings).run()


def run_process(settings: Settings, index: int, service_type: str = "worker") -> int:
    """One worker process: Celery's consumer, Switchyard's pool, the runs on one loop."""
    from switchyard.domains import registry_for
    from switchyard.platform import runtime
    from switchyard.platform.broker import Broker, with_broker_check
    from switchyard.platform.runs import admission
    from switchyard.platform.topology import TopologyMismatchError
    from switchyard.platform.worker import configure_worker, json_shutdown_lines
    from switchyard.services.health import announce

    broker = Broker.create(settings)
    assert broker is not None
    loop = runtime.start(
        settings, service_type, admission.dispatcher_for(broker.publisher, settings)
    )
    if index == 0:  # one line for the role, not one per process
        checks = with_broker_check(loop.services, broker)
        loop.spawn(announce(loop.services.health_monitor(checks)))
    json_shutdown_lines(service_type)
    try:
        configure_worker(
            broker.celery,
            registry_for(settings),
            process_heartbeat(settings, index),
            settings,
            loop,
        )
        try:
            broker.publisher.declare_topology()
        except TopologyMismatchError as mismatch:
            raise RoleConfigurationError(str(mismatch)) from None
        broker.celery.worker_main(
            [
                "--quiet",  # no banner on stdout: logs are JSON lines on stderr
                "worker",
                f"--loglevel={settings.log_level}",
                f"--queues={','.join(settings.worker_queues)}",
                # Runs in flight: the pool (platform.pool, the `worker_pool` setting) runs each
                # as a coroutine on the loop; Celery prefetches this many.
                f"--concurrency={settings.worker_concurrency}",
                f"--hostname={node_name(index)}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        runtime.close()
    return 0


class Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.failures = 0
        self.due = 0.0  # when a dead one is restarted


class Supervisor:
    """Starts the worker processes, replaces the ones that die, stops them on SIGTERM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children = [Child(i) for i in range(settings.worker_processes)]
        self.stopping = threading.Event()
        self.heartbeat = settings.heartbeat_file("worker")
        self.ready = False

    def _start(self, child: Child) -> None:
        from switchyard.embedded.process import die_with_parent

        env = {**os.environ, PROCESS_ENV: str(child.index)}
        child.process = subprocess.Popen(
            [sys.executable, "-m", "switchyard", "run", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            # Its own process group: a signal to the supervisor's group (a terminal's Ctrl-C,
            # an init that signals the group) reaches the supervisor only, which stops the
            # processes with their grace period.
            process_group=0,
            # A dead supervisor takes its workers along, as a dead container would.
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),  # noqa: PLW1509
        )
        child.started = time.monotonic()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def run(self) -> int:
        from prometheus_client import multiprocess

        from switchyard.platform.metrics import BacklogSampler, MetricsServer, worker_registry

        # The worker processes' gauges are the ones served, not this process's idle zeros.
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        sampler = BacklogSampler(self.settings)
        server = MetricsServer(
            worker_registry(sampler, self.settings.var_dir),
            self.settings.metrics_host,
            self.settings.worker_metrics_port,
            self.settings.metrics_token,
            health=partial(healthcheck.worker_served, self.settings),
        )
        for child in self.children:
            self._start(child)
        if server.start():
            sampler.start()
        try:
            code = self._watch()
        finally:
            self._stop_children()
            sampler.stop()
            server.stop()
            self.heartbeat.unlink(missing_ok=True)
        return code

    def _watch(self) -> int:
        while not self.stopping.wait(WATCH_SECONDS):
            for child in self.children:
                code = self._reap(child)
                if code == EXIT_CONFIG:
                    logger.error("worker process %d: configuration error; stopping", child.index)
                    return EXIT_CONFIG
            self._beat()
        return 0

    def _reap(self, child: Child) -> int | None:
        """Restart a dead process when it is due; its exit code when it just died."""
        from prometheus_client import multiprocess

        process = child.process
        now = time.monotonic()
        if process is None:
            if now >= child.due:
                self._start(child)
            return None
        code = process.poll()
        if code is None:
            return None
        multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        lived = now - child.started
        child.failures = 0 if lived >= HEALTHY_LIFETIME_SECONDS else child.failures + 1
        delay = min(RESTART_MIN_SECONDS * 2 ** max(child.failures - 1, 0), RESTART_MAX_SECONDS)
        why = "it died"
        if code == EXIT_LOOP_BLOCKED:
            why = "its event loop was blocked past a run's time limit"
        logger.error(
            "worker process %d exited with %s (%s); restarting it in %.0f s",
            child.index,
            code,
            why,
            delay,
            extra={"exit_code": code, "lived_seconds": round(lived, 1)},
        )
        child.process, child.due = None, now + delay
        return code

    def _beat(self) -> None:
        """The role's heartbeat: the processes whose own heartbeats are fresh (first written
        once all of them are up)."""
        processes = []
        for child in self.children:
            try:
                content, age = read_heartbeat(process_heartbeat(self.settings, child.index))
            except (OSError, ValueError, KeyError):
                continue
            if child.process is not None and age <= self.settings.heartbeat_max_age_seconds:
                processes.append(content)
        self.ready = self.ready or len(processes) == len(self.children)
        if self.ready:
            write_heartbeat(self.heartbeat, {"pid": os.getpid(), "processes": processes})

    def _stop_children(self) -> None:
        """SIGTERM: each process finishes its runs within its grace period, then hands back."""
        live = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        deadline = (
            time.monotonic()
            + self.settings.worker_shutdown_grace_seconds
            + EXIT_AFTER_GRACE_SECONDS
        )
        for process in live:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.error("worker process %d did not stop; killed", process.pid)
                process.kill()
                process.wait()
