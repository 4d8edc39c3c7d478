from __future__ import annotations

import asyncio

from switchyard.services.health import HealthCheck, HealthMonitor


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
