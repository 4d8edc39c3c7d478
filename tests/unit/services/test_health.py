from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path

import psutil
import pytest

from switchyard.services import host
from switchyard.services.health import HealthCheck, HealthMonitor, startup_summary


def monitor(
    checks: list[HealthCheck], *, timeout: float = 1.0, cache: float = 0.0
) -> HealthMonitor:
    return HealthMonitor(
        checks, service_type="test", version="1", timeout=timeout, cache_seconds=cache
    )


async def up() -> None:
    return None


async def broken() -> None:
    raise ConnectionRefusedError("connection refused")


async def test_all_up_is_ok_with_latency() -> None:
    report = await monitor([HealthCheck("a", True, up)]).report()
    assert report.status == "ok"
    assert report.checks["a"].status == "up"
    assert report.checks["a"].latency_ms >= 0
    assert report.checks["a"].error is None


async def test_non_critical_down_is_degraded_and_still_healthy() -> None:
    report = await monitor([HealthCheck("a", True, up), HealthCheck("b", False, broken)]).report()
    assert report.status == "degraded"
    assert report.healthy
    assert report.checks["b"].error == "ConnectionRefusedError: connection refused"


async def test_critical_down_is_error() -> None:
    report = await monitor([HealthCheck("a", True, broken), HealthCheck("b", False, up)]).report()
    assert report.status == "error"
    assert not report.healthy


async def test_check_without_probe_is_disabled_and_not_a_failure() -> None:
    report = await monitor([HealthCheck("graph", False, None)]).report()
    assert report.checks["graph"].status == "disabled"
    assert report.status == "ok"


async def test_probe_that_never_answers_is_cut_at_the_timeout() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    report = await monitor([HealthCheck("slow", True, hangs)], timeout=0.05).report()
    assert report.checks["slow"].status == "down"
    assert report.checks["slow"].error == "no answer within 0.05 s"


async def test_probes_run_concurrently() -> None:
    started: list[str] = []
    both_started = asyncio.Event()

    def probe(name: str) -> HealthCheck:
        async def run() -> None:
            started.append(name)
            if len(started) == 2:
                both_started.set()
            await both_started.wait()  # only returns if the other probe started meanwhile

        return HealthCheck(name, True, run)

    report = await monitor([probe("a"), probe("b")], timeout=1.0).report()
    assert report.status == "ok"
    assert sorted(started) == ["a", "b"]


async def test_concurrent_callers_share_one_run_and_the_cache_serves_the_next() -> None:
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)

    health = monitor([HealthCheck("db", True, counted)], cache=60)
    reports = await asyncio.gather(*(health.report() for _ in range(50)))
    await health.report()
    assert calls == 1
    assert len({id(report) for report in reports}) == 1


async def test_expired_cache_probes_again() -> None:
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    health = monitor([HealthCheck("db", True, counted)], cache=0)
    await health.report()
    await health.report()
    assert calls == 2


async def test_readiness_runs_only_critical_probes() -> None:
    called: list[str] = []

    def probe(name: str) -> HealthCheck:
        async def run() -> None:
            called.append(name)

        return HealthCheck(name, name == "critical", run)

    report = await monitor([probe("critical"), probe("optional")]).report(critical_only=True)
    assert called == ["critical"]
    assert list(report.checks) == ["critical"]


async def test_long_error_messages_are_truncated() -> None:
    async def verbose() -> None:
        raise RuntimeError("x" * 1000)

    report = await monitor([HealthCheck("v", True, verbose)]).report()
    assert report.checks["v"].error is not None
    assert len(report.checks["v"].error) == 300


async def test_the_start_up_line_names_what_was_reached_missed_and_not_configured() -> None:
    report = await monitor(
        [
            HealthCheck("postgres", True, up),
            HealthCheck("rabbitmq", False, broken),
            HealthCheck("zhipu", False, None),
            HealthCheck("disk", False, up),
        ]
    ).report()
    level, line = startup_summary(report)
    assert level == logging.WARNING
    assert line == (
        "backing services at start: reached postgres, disk; could not reach rabbitmq "
        "(ConnectionRefusedError: connection refused); not configured: zhipu"
    )
    level, line = startup_summary(await monitor([HealthCheck("postgres", True, up)]).report())
    assert (level, line) == (logging.INFO, "backing services at start: reached postgres")


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content + "\n")
    return tmp_path


def test_memory_is_the_cgroup_v2_use_against_its_limit(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"memory.max": str(512 * 2**20), "memory.current": str(480 * 2**20)})
    use = host.memory_use(root)
    assert (use.used, use.limit) == (480 * 2**20, 512 * 2**20)
    assert use.percent == 93.75
    with pytest.raises(host.ResourceLowError) as raised:
        host.check_memory(90, root)
    assert str(raised.value) == (
        "the container's memory (cgroup v2) against its limit: 480.0 MiB of 512.0 MiB "
        "(93.8 %): above HEALTH_MEMORY_MAX_PERCENT=90"
    )
    assert host.check_memory(95, root).endswith("(93.8 %)")


def test_memory_is_the_cgroup_v1_use_against_its_limit(tmp_path: Path) -> None:
    root = cgroup(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": str(2**30),
            "memory/memory.usage_in_bytes": str(2**29),
        },
    )
    use = host.memory_use(root)
    assert use.percent == 50.0
    assert use.source == "the container's memory (cgroup v1) against its limit"


def test_without_a_cgroup_limit_memory_is_the_process_against_the_ram(tmp_path: Path) -> None:
    unlimited = cgroup(
        tmp_path,
        {
            "memory.max": "max",
            "memory.current": "12345",
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.usage_in_bytes": "12345",
        },
    )
    use = host.memory_use(unlimited)
    assert use.source == "this process's RSS against the RAM"
    assert use.limit == psutil.virtual_memory().total
    # The process's own RSS, read a moment apart: within 64 MiB of each other.
    assert abs(use.used - psutil.Process().memory_info().rss) < 64 * 2**20


def test_disk_is_the_free_share_of_the_file_system_holding_the_path(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    free = usage.free * 100 / usage.total
    figures = host.check_disk(tmp_path / "not" / "made" / "yet", 0)
    assert figures.endswith(f"at {tmp_path}")
    shown = re.search(r"\(([\d.]+) %\)", figures)
    assert shown is not None
    assert abs(float(shown.group(1)) - free) < 1  # other processes write meanwhile
    with pytest.raises(host.ResourceLowError, match="below HEALTH_DISK_MIN_FREE_PERCENT=100"):
        host.check_disk(tmp_path, 100)
