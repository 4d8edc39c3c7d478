"""`/health` latency with every dependency up, and with one that accepts connections and never
answers (Redis on a silent port). Every request runs the probes (HEALTH_CACHE_SECONDS=0).
Baseline, in the same run: `/health/live` of the same gateway (no probe at all).

Targets: p50 <= 20 ms with everything up; with the silent dependency, at most the probe
timeout (HEALTH_PROBE_TIMEOUT_SECONDS, 1 s here) + 100 ms.
Usage: uv run python -m bench.health_failure [--requests 100] [--failing-requests 10]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from bench.harness import (
    DEFAULT_BROKER,
    DEFAULT_REDIS,
    SWITCHYARD,
    Figures,
    free_port,
    percentile,
    print_table,
    print_targets,
    process,
    ratio,
    role_env,
    scratch_database,
    wait_http,
)

PROBE_TIMEOUT = 1.0


@contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def latencies(url: str, count: int) -> list[float]:
    """Milliseconds of `count` sequential GETs (any status)."""
    taken = []
    with httpx.Client(timeout=30) as client:
        client.get(url)  # warm-up: connection, lazy imports
        for _ in range(count):
            started = time.perf_counter()
            client.get(url)
            taken.append((time.perf_counter() - started) * 1000)
    return taken


def measure(database: str, redis_url: str, requests: int) -> tuple[list[float], list[float], int]:
    port = free_port()
    env = role_env(
        DATABASE_URL=database,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=DEFAULT_BROKER,
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        HEALTH_CACHE_SECONDS="0",
        HEALTH_PROBE_TIMEOUT_SECONDS=str(PROBE_TIMEOUT),
        # Redis critical (the default critical set is PostgreSQL alone since issue 34): a silent
        # critical dependency must be reported not ready, within the probe's timeout.
        HEALTH_CRITICAL="postgres,redis",
        REDIS_SOCKET_TIMEOUT_SECONDS="30",  # the probe's own timeout must be what bounds it
    )
    base = f"http://127.0.0.1:{port}"
    with process([SWITCHYARD, "run", "api-gateway"], env) as gateway:
        wait_http(f"{base}/health/live", gateway)
        status = httpx.get(f"{base}/health", timeout=30).status_code
        return latencies(f"{base}/health", requests), latencies(f"{base}/health/live", 50), status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--failing-requests", type=int, default=10)
    args = parser.parse_args(argv)

    with scratch_database() as database, silent_port() as silent:
        up, live, up_status = measure(database, DEFAULT_REDIS, args.requests)
        down, _, down_status = measure(
            database, f"redis://127.0.0.1:{silent}/0", args.failing_requests
        )

    live_p50 = percentile(live, 0.5)
    rows = [
        [
            "/health/live (baseline, no probe)",
            "200",
            Figures(tuple(live)).median,
            percentile(live, 0.99),
            "1.00x",
        ],
        [
            "/health, every dependency up",
            str(up_status),
            percentile(up, 0.5),
            percentile(up, 0.99),
            ratio(percentile(up, 0.5), live_p50),
        ],
        [
            "/health, Redis silent",
            str(down_status),
            percentile(down, 0.5),
            max(down),
            ratio(percentile(down, 0.5), live_p50),
        ],
    ]
    print_table(
        f"/health latency, sequential requests ({args.requests} up, {args.failing_requests} "
        f"with a silent Redis), ms",
        ["what", "status", "p50 ms", "p99 / max ms", "p50 vs live"],
        [[f"{cell:.1f}" if isinstance(cell, float) else cell for cell in row] for row in rows],
    )
    bound = PROBE_TIMEOUT * 1000 + 100
    print_targets(
        [
            [
                "p50 <= 20 ms, all up",
                f"{percentile(up, 0.5):.1f} ms",
                percentile(up, 0.5) <= 20,
            ],
            [
                f"silent dependency <= {bound:.0f} ms",
                f"{max(down):.0f} ms (max)",
                max(down) <= bound,
            ],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
