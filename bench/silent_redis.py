"""API latency with a Redis that accepts connections and never answers (a hung server, a
network path that drops packets), against the same gateway build with Redis answering.

Baseline, in the same run: a gateway on the real Redis. Measured: a gateway whose REDIS_URL
is a silent port; its first request waits out one Redis timeout (the breaker opens), then
every request skips Redis. Target: after the first request, p50 within the baseline's p50
+ 100 ms, for a read (GET /api/v1/tasks/?limit=1) and a submission (POST /api/v1/tasks/run).
Usage: uv run python -m bench.silent_redis [--requests 50]
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx

from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    free_port,
    percentile,
    print_table,
    print_targets,
    process,
    ratio,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)
from bench.health_failure import silent_port

SOCKET_TIMEOUT = 2.0
RUN = {"task": "system.echo", "payload": {"message": "bench"}}


def _timed(client: httpx.Client, method: str, path: str, **kwargs: object) -> float:
    started = time.perf_counter()
    answer = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    taken = (time.perf_counter() - started) * 1000
    if answer.status_code not in (200, 202):
        raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
    return taken


def measure(
    database: str, broker: str, redis_url: str, requests: int
) -> tuple[float, list[float], list[float]]:
    """(the first request's ms, reads' ms, submissions' ms) against one gateway process; the
    first request is the sign-up, the first to use Redis."""
    port = free_port()
    env = role_env(
        DATABASE_URL=database,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=broker,
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        REDIS_SOCKET_TIMEOUT_SECONDS=str(SOCKET_TIMEOUT),
    )
    base = f"http://127.0.0.1:{port}"
    with process([SWITCHYARD, "run", "api-gateway"], env) as gateway:
        wait_http(f"{base}/health/live", gateway)
        with httpx.Client(base_url=base, timeout=60) as client:
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            body = {"email": email, "password": "a long bench password", "tenant_name": "Bench"}
            started = time.perf_counter()
            client.post("/api/v1/auth/register", json=body)  # the first call that uses Redis
            first = (time.perf_counter() - started) * 1000
            login = {"email": email, "password": body["password"]}
            tokens = client.post("/api/v1/auth/login", json=login).json()
            client.headers["Authorization"] = f"Bearer {tokens['access_token']}"
            reads = [
                _timed(client, "GET", "/api/v1/tasks/", params={"limit": 1})
                for _ in range(requests)
            ]
            submissions = [
                _timed(client, "POST", "/api/v1/tasks/run", json=RUN) for _ in range(requests)
            ]
    return first, reads, submissions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args(argv)

    with scratch_database() as database, scratch_vhost() as broker, silent_port() as silent:
        _, base_reads, base_runs = measure(database, broker, DEFAULT_REDIS, args.requests)
        first, reads, runs = measure(
            database, broker, f"redis://127.0.0.1:{silent}/0", args.requests
        )

    rows = []
    for what, baseline, silent_figures in (
        ("GET /api/v1/tasks/?limit=1", base_reads, reads),
        ("POST /api/v1/tasks/run", base_runs, runs),
    ):
        rows.append(
            [
                f"{what}, Redis answering (baseline)",
                percentile(baseline, 0.5),
                percentile(baseline, 0.99),
                "1.00x",
            ]
        )
        rows.append(
            [
                f"{what}, Redis silent",
                percentile(silent_figures, 0.5),
                percentile(silent_figures, 0.99),
                ratio(percentile(silent_figures, 0.5), percentile(baseline, 0.5)),
            ]
        )
    print_table(
        f"API latency after the first request, {args.requests} sequential requests each, ms "
        f"(the first request with Redis silent, a sign-up, took {first:.0f} ms; "
        f"Redis socket timeout {SOCKET_TIMEOUT:g} s)",
        ["what", "p50 ms", "p99 ms", "p50 vs baseline"],
        [[f"{cell:.1f}" if isinstance(cell, float) else cell for cell in row] for row in rows],
    )
    print_targets(
        [
            [
                "reads, Redis silent: p50 <= baseline + 100 ms",
                f"{percentile(reads, 0.5):.1f} vs {percentile(base_reads, 0.5):.1f} ms",
                percentile(reads, 0.5) <= percentile(base_reads, 0.5) + 100,
            ],
            [
                "submissions, Redis silent: p50 <= baseline + 100 ms",
                f"{percentile(runs, 0.5):.1f} vs {percentile(base_runs, 0.5):.1f} ms",
                percentile(runs, 0.5) <= percentile(base_runs, 0.5) + 100,
            ],
        ]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
