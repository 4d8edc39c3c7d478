"""Prometheus metrics of the task platform: submissions, worker task events, queues and beat.

The worker runs in Prometheus' multiprocess mode (its worker processes each write their own
files; the supervisor serves the merged view): see `multiprocess.py`. Queue depths and the
dead-letter archive are sampled by one thread in the supervisor and served from the sample,
so a scrape never waits on the broker or the database."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from kombu import Connection
from kombu.exceptions import ChannelError
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from pydantic import SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.db.models import DeadLetter
from switchyard.db.models.task_run import IN_FLIGHT, WAITING
from switchyard.platform.celery_app import Transport
from switchyard.platform.topology import DEAD_LETTER_QUEUE, WORK_QUEUES
from switchyard.services import host
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

RUNS_SUBMITTED = Counter(
    "switchyard_task_runs_submitted_total",
    "Runs submitted through the API, by task and outcome "
    "(accepted, waiting (for its tenant's share), duplicate, broker_unavailable)",
    ["task", "outcome"],
)
RUNS_ADMITTED = Counter(
    "switchyard_task_runs_admitted_total",
    "Runs that waited for their tenant's share and were then admitted and published",
)
RUN_GROUPS = Histogram(
    "switchyard_task_run_group_size",
    "Single runs of concurrent requests that one gateway process stored and published "
    "together (group commit: TASK_GROUP_COMMIT_MS, TASK_GROUP_COMMIT_RUNS)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
TASK_EVENTS = Counter(
    "switchyard_worker_tasks_total",
    "Task deliveries seen by workers, by task and event "
    "(received, started, succeeded, failed, retried, skipped, dead_lettered, handed_back)",
    ["task", "event"],
)
TASK_DURATION = Histogram(
    "switchyard_worker_task_duration_seconds",
    "Time a task handler ran, by task and outcome",
    ["task", "outcome"],
    buckets=DURATION_BUCKETS,
)
RUNS_IN_FLIGHT = Gauge(
    "switchyard_worker_runs_in_flight",
    "Runs this worker process holds on its event loop",
    multiprocess_mode="liveall",
)
SLOTS_FREE = Gauge(
    "switchyard_worker_slots_free",
    "Runs this worker process could still take (WORKER_CONCURRENCY minus runs in flight)",
    multiprocess_mode="liveall",
)
LOOP_LAG = Gauge(
    "switchyard_worker_loop_lag_seconds",
    "How late this worker process's event loop last turned (0 when it keeps up)",
    multiprocess_mode="liveall",
)
LOOP_STALLS = Counter(
    "switchyard_worker_loop_stalls_total",
    "Times a handler blocked a worker's event loop longer than WORKER_STALL_SECONDS, by task",
    ["task"],
)
RUNS_ABANDONED = Counter(
    "switchyard_worker_runs_abandoned_total",
    "Runs that ignored cancellation at their time limit, cancel or shutdown, by task and why",
    ["task", "reason"],
)
BEAT_LEADER = Gauge(
    "switchyard_beat_leader",
    "1 while this beat holds the leader lock",
    multiprocess_mode="mostrecent",
)
BEAT_LAST_TICK = Gauge(
    "switchyard_beat_last_tick_timestamp_seconds",
    "Unix time of this beat's last completed tick",
    multiprocess_mode="mostrecent",
)
TENANT_SPEND = Gauge(
    "switchyard_tenant_spend",
    "This month's use (UTC) of the top tenants by LLM tokens (label: its slug), the others "
    'together (tenant="other"): llm_tokens, runs, run_seconds, searches; set by beat\'s leader',
    ["tenant", "what"],
    multiprocess_mode="mostrecent",
)
BEAT_PUBLISHED = Counter(
    "switchyard_beat_runs_published_total",
    "Runs beat published, by kind (scheduled, republished)",
    ["kind"],
)
RETENTION_DELETED = Counter(
    "switchyard_retention_expired_total",
    "Rows the retention job removed, by kind (runs, dead_letters, idempotency_keys)",
    ["kind"],
)


TENANT_METRICS_MAX = 100
TENANT_STATES = {
    "waiting_for_capacity": WAITING,
    "in_flight": IN_FLIGHT,
}


async def busiest_tenants(connection: AsyncConnection, limit: int) -> dict[tuple[str, str], int]:
    """(tenant id, waiting_for_capacity | in_flight) of the `limit` busiest tenants in each:
    two scans of small partial indexes (ix_task_runs_waiting, ix_task_runs_in_flight),
    whatever the ledger's size."""
    counts: dict[tuple[str, str], int] = {}
    for state, condition in TENANT_STATES.items():
        rows = await connection.execute(
            text(
                "SELECT tenant_id, count(*) AS n FROM task_runs WHERE "  # noqa: S608 - constants
                f"{condition} GROUP BY tenant_id ORDER BY n DESC LIMIT :limit"
            ),
            {"limit": limit},
        )
        for tenant_id, n in rows:
            counts[(str(tenant_id), state)] = int(n)
    return counts


def queue_names(settings: Settings) -> list[str]:
    assert settings.celery_broker_url is not None
    names = list(WORK_QUEUES)
    if Transport.of(settings.celery_broker_url.get_secret_value()).dead_letter_exchange:
        names.append(str(DEAD_LETTER_QUEUE.name))
    return names


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages ready in each work queue and the dead-letter queue, asked of the broker
    (blocking: call it from a thread)."""
    assert settings.celery_broker_url is not None
    depths: dict[str, int] = {}
    timeout = settings.broker_publish_timeout_seconds
    with Connection(
        settings.celery_broker_url.get_secret_value(), connect_timeout=timeout
    ) as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        for name in queue_names(settings):
            channel = connection.channel()
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
                depths[name] = int(count)
            except ChannelError:
                depths[name] = 0  # not declared yet (Redis drops empty lists): nothing queued
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return depths


class BacklogSampler(threading.Thread):
    """Samples the depth of each work queue, the dead-letter queue and the archive."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="metrics-sampler", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()
        self.queue_depths: dict[str, float] = {}
        self.archive_size: float | None = None
        # Per tenant, the busiest TENANT_METRICS_MAX of them: runs waiting for capacity and
        # runs in flight (holding a slot of the tenant's share).
        self.tenant_runs: dict[tuple[str, str], float] = {}
        self.sampled_at: float | None = None
        self.engine: AsyncEngine | None = None

    def sample_queues(self) -> dict[str, float]:
        return {name: float(depth) for name, depth in queue_depths(self.settings).items()}

    async def sample_archive(self, engine: AsyncEngine) -> float:
        async with engine.connect() as connection:
            count = await connection.scalar(
                select(func.count())
                .select_from(DeadLetter)
                .where(DeadLetter.replayed_run_id.is_(None))
            )
        return float(count or 0)

    async def sample_tenants(self, engine: AsyncEngine) -> dict[tuple[str, str], float]:
        async with engine.connect() as connection:
            counts = await busiest_tenants(connection, TENANT_METRICS_MAX)
        return {key: float(n) for key, n in counts.items()}

    def sample(self, runner: asyncio.Runner, engine: AsyncEngine) -> None:
        try:
            self.queue_depths = self.sample_queues()
        except Exception as exc:
            logger.warning("queue depths not sampled", extra={"error": repr(exc)})
            self.queue_depths = {}
        try:
            self.archive_size = runner.run(self.sample_archive(engine))
        except Exception as exc:
            logger.warning("dead-letter archive not sampled", extra={"error": repr(exc)})
            self.archive_size = None
        try:
            self.tenant_runs = runner.run(self.sample_tenants(engine))
        except Exception as exc:
            logger.warning("tenant runs not sampled", extra={"error": repr(exc)})
            self.tenant_runs = {}
        self.sampled_at = time.time()

    def start(self) -> None:
        """Start sampling. Everything the thread imports is imported here, first: a prefork
        child forked while this thread held an import lock would wait on it forever."""
        from switchyard.db.engine import create_engine

        assert self.settings.database is not None
        assert self.settings.celery_broker_url is not None
        Connection(self.settings.celery_broker_url.get_secret_value()).transport  # noqa: B018 - loads the transport module
        # One connection at most; asyncpg binds it to the thread's loop on first use.
        self.engine = create_engine(self.settings, self.settings.database, "switchyard-metrics")
        super().start()

    def run(self) -> None:
        assert self.engine is not None
        with asyncio.Runner() as runner:
            try:
                while not self.stopped.is_set():
                    self.sample(runner, self.engine)
                    self.stopped.wait(self.settings.metrics_sample_seconds)
            finally:
                runner.run(self.engine.dispose())

    def stop(self) -> None:
        self.stopped.set()


class BacklogCollector(Collector):
    """Serves the sampler's last figures; nothing is sampled at scrape time."""

    def __init__(self, sampler: BacklogSampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "switchyard_queue_depth",
            "Messages ready in each broker queue (work queues and the dead-letter queue)",
            labels=["queue"],
        )
        for name, value in sorted(self.sampler.queue_depths.items()):
            depth.add_metric([name], value)
        yield depth
        tenants = GaugeMetricFamily(
            "switchyard_tenant_runs",
            "Runs per tenant (the busiest ones): waiting_for_capacity, or in_flight (holding "
            "a slot of its share: queued in the broker, started or retrying)",
            labels=["tenant_id", "state"],
        )
        for (tenant_id, state), value in sorted(self.sampler.tenant_runs.items()):
            tenants.add_metric([tenant_id, state], value)
        yield tenants
        if self.sampler.archive_size is not None:
            yield GaugeMetricFamily(
                "switchyard_dead_letter_archive_size",
                "Archived dead letters not yet replayed",
                value=self.sampler.archive_size,
            )
        if self.sampler.sampled_at is not None:
            yield GaugeMetricFamily(
                "switchyard_backlog_sampled_timestamp_seconds",
                "Unix time of the last queue and archive sample",
                value=self.sampler.sampled_at,
            )


def bearer_matches(token: SecretStr | None, authorization: str | None) -> bool:
    """Whether `Authorization: Bearer <token>` names `token` (constant-time); True when no
    token is configured."""
    if token is None or not token.get_secret_value():
        return True
    scheme, _, offered = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), expected)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _guarded(app: WSGIApp, token: SecretStr | None) -> WSGIApp:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not bearer_matches(token, environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"Metrics need Authorization: Bearer <METRICS_TOKEN>.\n"]
        return app(environ, start_response)

    return guarded


HealthCheck = Callable[[], tuple[bool, str]]


def _with_health(app: WSGIApp, health: HealthCheck) -> WSGIApp:
    """`GET /health`: 200 `ok` or 503 `unhealthy`, for a kubelet's httpGet probe (no process
    started per probe, no token: it says nothing else; the reason goes to the log)."""

    def served(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/health":
            return app(environ, start_response)
        try:
            healthy, reason = health()
        except Exception as exc:  # a broken check is an unhealthy answer, never a crash
            healthy, reason = False, f"check failed ({type(exc).__name__}: {exc})"
        if not healthy:
            logger.warning("health probe: unhealthy", extra={"reason": reason})
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])
        return [b"ok\n" if healthy else b"unhealthy\n"]

    return served


class MetricsServer:
    """An HTTP /metrics endpoint on its own thread, for roles without the gateway; with a
    token, only for `Authorization: Bearer <METRICS_TOKEN>` (as the gateway's). With `health`,
    also `/health` for probes (see _with_health)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        token: SecretStr | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.token = token
        self.health = health
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> bool:
        if self.port == 0:
            return False
        app = _guarded(make_wsgi_app(self.registry), self.token)
        if self.health is not None:
            app = _with_health(app, self.health)
        try:
            self.server = make_server(
                self.host, self.port, app, ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            logger.warning(
                "metrics endpoint not started", extra={"port": self.port, "error": repr(exc)}
            )
            return False
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )
        self.thread.start()
        logger.info("metrics served", extra={"host": self.host, "port": self.port})
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class HostCollector(Collector):
    """The host's limits as the health checks read them (services.host), at scrape time: the
    free share of the file system holding the role's data, and the share of its memory limit
    in use (in a container, the cgroup's: every process of the role together)."""

    def __init__(self, path: Path = Path("var")) -> None:
        self.path = path

    def watch(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            usage = shutil.disk_usage(host.existing(self.path))
            memory = host.memory_use()
        except OSError as exc:  # a scrape never fails for it
            logger.debug("host figures not read", extra={"error": repr(exc)})
            return
        yield GaugeMetricFamily(
            "switchyard_host_disk_free_ratio",
            "Free share of the file system holding VAR_DIR (the disk health check's figure)",
            value=usage.free / usage.total if usage.total else 0.0,
        )
        yield GaugeMetricFamily(
            "switchyard_host_memory_used_ratio",
            "Share of the role's memory limit in use (the memory health check's figure)",
            value=memory.percent / 100,
        )


HOST = HostCollector()
REGISTRY.register(HOST)


def worker_registry(sampler: BacklogSampler | None, var_dir: Path) -> CollectorRegistry:
    """Every process's counters (multiprocess files), plus the backlog sample and the host's
    figures."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if sampler is not None:
        registry.register(BacklogCollector(sampler))
    registry.register(HostCollector(var_dir))
    return registry
