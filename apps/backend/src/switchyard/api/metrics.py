"""Gateway metrics: requests by route template, latency, in-flight requests, database pools.

Counters of the task platform, the cache, rate limits and the LLM client live beside the code
that moves them; `/metrics` serves them all from this process (or, when the gateway runs with
PROMETHEUS_MULTIPROC_DIR, from every process that writes there)."""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence

from fastapi.routing import iter_route_contexts
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute, compile_path
from starlette.types import Scope

UNMATCHED_ROUTE = "<unmatched>"

HTTP_REQUESTS = Counter(
    "switchyard_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "switchyard_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_IN_PROGRESS = Gauge(
    "switchyard_http_requests_in_progress",
    "HTTP requests being served",
    multiprocess_mode="livesum",
)


class RouteTemplates:
    """The full path template of each route (`/api/v1/tasks/{task_id}`), prefixes included.

    The matched route in the scope knows only its path within its router; a route included
    under two prefixes has two templates, told apart by which one the request path matches."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._templates: dict[int, list[tuple[re.Pattern[str], str]]] = {}
        for context in iter_route_contexts(routes):
            template = context.path_format
            if template:
                regex, _, _ = compile_path(template)
                self._templates.setdefault(id(context.original_route), []).append((regex, template))

    def of(self, scope: Scope) -> str:
        """A label that never holds an id: a label per raw path would grow without bound."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED_ROUTE
        candidates = self._templates.get(id(route), [])
        for regex, template in candidates:
            if len(candidates) == 1 or regex.match(scope["path"]):
                return template
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else UNMATCHED_ROUTE


def route_template(scope: Scope) -> str:
    app = scope.get("app")
    templates = getattr(getattr(app, "state", None), "route_templates", None)
    if isinstance(templates, RouteTemplates):
        return templates.of(scope)
    return UNMATCHED_ROUTE


def request_started() -> None:
    HTTP_IN_PROGRESS.inc()


def request_finished(scope: Scope, status: int, elapsed: float) -> str:
    """Count an answered request; returns its route template."""
    route = route_template(scope)
    HTTP_IN_PROGRESS.dec()
    HTTP_REQUESTS.labels(method=scope["method"], route=route, status=str(status)).inc()
    HTTP_DURATION.labels(method=scope["method"], route=route).observe(elapsed)
    return route


class PoolCollector(Collector):
    """Connections in use and overflow of each database pool of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakKeyDictionary[AsyncEngine, str] = weakref.WeakKeyDictionary()

    def track(self, engine: AsyncEngine, database: str) -> None:
        with self._lock:
            self._engines[engine] = database

    def forget(self, engine: AsyncEngine) -> None:
        with self._lock:
            self._engines.pop(engine, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            engines = list(self._engines.items())
        figures: dict[str, list[float]] = {}
        for engine, database in engines:
            pool = engine.pool
            checked_out = getattr(pool, "checkedout", None)
            overflow = getattr(pool, "overflow", None)
            size = getattr(pool, "size", None)
            if checked_out is None or overflow is None or size is None:
                continue  # a pool without these figures (NullPool, StaticPool)
            totals = figures.setdefault(database, [0.0, 0.0, 0.0])
            totals[0] += checked_out()
            totals[1] += max(0, overflow())
            totals[2] += size()
        in_use = GaugeMetricFamily(
            "switchyard_db_pool_connections_in_use",
            "Database connections checked out of the pool",
            labels=["database"],
        )
        overflow_family = GaugeMetricFamily(
            "switchyard_db_pool_overflow",
            "Connections open beyond the pool size",
            labels=["database"],
        )
        size_family = GaugeMetricFamily(
            "switchyard_db_pool_size", "Configured pool size", labels=["database"]
        )
        for database, (used, over, configured) in sorted(figures.items()):
            in_use.add_metric([database], used)
            overflow_family.add_metric([database], over)
            size_family.add_metric([database], configured)
        yield in_use
        yield overflow_family
        yield size_family


POOLS = PoolCollector()
REGISTRY.register(POOLS)


def scrape_registry() -> CollectorRegistry:
    """What `/metrics` serves: this process, or every process in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(POOLS)
    return registry
