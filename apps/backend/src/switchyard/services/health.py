"""Health checks: every probe at once, each bounded by a timeout, results cached briefly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

MAX_ERROR_LENGTH = 300

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthCheck:
    """A named dependency; a check with no probe is reported as disabled."""

    name: str
    critical: bool
    probe: Callable[[], Awaitable[None]] | None


class CheckResult(BaseModel):
    status: Literal["up", "down", "disabled"]
    critical: bool
    latency_ms: float
    error: str | None = None


class HealthReport(BaseModel):
    status: Literal["ok", "degraded", "error"]
    service_type: str
    version: str
    timestamp: datetime
    checks: dict[str, CheckResult]

    @property
    def healthy(self) -> bool:
        return self.status != "error"


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_LENGTH]


class HealthMonitor:
    """Runs the checks; concurrent callers within the cache window share one run."""

    def __init__(
        self,
        checks: list[HealthCheck],
        *,
        service_type: str,
        version: str,
        timeout: float,
        cache_seconds: float,
    ) -> None:
        self.checks = checks
        self.service_type = service_type
        self.version = version
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._cached: dict[bool, tuple[float, HealthReport]] = {}
        self._running: dict[bool, asyncio.Task[HealthReport]] = {}

    async def report(self, *, critical_only: bool = False) -> HealthReport:
        cached = self._cached.get(critical_only)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        running = self._running.get(critical_only)
        if running is None:
            running = asyncio.ensure_future(self._collect(critical_only))
            self._running[critical_only] = running
            running.add_done_callback(lambda _: self._running.pop(critical_only, None))
        return await asyncio.shield(running)

    async def _collect(self, critical_only: bool) -> HealthReport:
        checks = [check for check in self.checks if check.critical or not critical_only]
        results = await asyncio.gather(*(self._run(check) for check in checks))
        by_name = {check.name: result for check, result in zip(checks, results, strict=True)}
        # A critical check that is not configured fails too: a deployment that names a
        # dependency critical and forgets its URL is not ready.
        if any(r.status != "up" and r.critical for r in results):
            status: Literal["ok", "degraded", "error"] = "error"
        elif any(r.status == "down" for r in results):
            status = "degraded"
        else:
            status = "ok"
        report = HealthReport(
            status=status,
            service_type=self.service_type,
            version=self.version,
            timestamp=datetime.now(UTC),
            checks=by_name,
        )
        self._cached[critical_only] = (time.monotonic(), report)
        return report

    async def _run(self, check: HealthCheck) -> CheckResult:
        if check.probe is None:
            return CheckResult(status="disabled", critical=check.critical, latency_ms=0.0)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await check.probe()
        except Exception as exc:  # a probe failure of any kind is a "down" result
            return CheckResult(
                status="down",
                critical=check.critical,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                error=_describe(exc, self.timeout),
            )
        return CheckResult(
            status="up",
            critical=check.critical,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )


def startup_summary(report: HealthReport) -> tuple[int, str]:
    """The level and the line a role logs once at start: which checks it reached, which it
    could not (with why) and which are not configured."""
    reached = [name for name, check in report.checks.items() if check.status == "up"]
    down = [(name, check.error) for name, check in report.checks.items() if check.status == "down"]
    off = [name for name, check in report.checks.items() if check.status == "disabled"]
    parts = [f"reached {', '.join(reached) or 'none'}"]
    if down:
        parts.append("could not reach " + "; ".join(f"{name} ({error})" for name, error in down))
    if off:
        parts.append(f"not configured: {', '.join(off)}")
    return (logging.WARNING if down else logging.INFO), "backing services at start: " + "; ".join(
        parts
    )


async def announce(monitor: HealthMonitor) -> None:
    """Log the role's backing services once, as its start found them (every probe bounded by
    HEALTH_PROBE_TIMEOUT_SECONDS, so this never holds the start up for long). Its report is
    its own: the health endpoints' cache is left as it was."""
    own = HealthMonitor(
        monitor.checks,
        service_type=monitor.service_type,
        version=monitor.version,
        timeout=monitor.timeout,
        cache_seconds=0,
    )
    report = await own.report()
    level, line = startup_summary(report)
    logger.log(
        level,
        line,
        extra={
            "reached": [n for n, c in report.checks.items() if c.status == "up"],
            "unreachable": [n for n, c in report.checks.items() if c.status == "down"],
            "not_configured": [n for n, c in report.checks.items() if c.status == "disabled"],
        },
    )
