"""Gateway overhead: `GET /health/live` and an authenticated `GET /api/v1/tasks/{id}` on the
real gateway process, against a bare Starlette app with one route on the same uvicorn
settings (uvloop, httptools, one process), both loaded from another process (wrk).

Targets: throughput on /health/live >= 0.8x the bare app; p99 <= 1.5x the bare app.
For reference, the same one-route app on bare FastAPI is measured too: what the framework
itself costs before any Switchyard code runs.
Usage: uv run python -m bench.gateway_overhead [--rounds 3] [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    Figures,
    Load,
    free_port,
    load,
    print_table,
    print_targets,
    process,
    ratio,
    role_env,
    scratch_database,
    wait_http,
)
from switchyard.db.models import RunState, TaskRun

PASSWORD = "bench password, long enough"  # noqa: S105 - a throwaway account


def account(base: str) -> tuple[str, uuid.UUID]:
    """A tenant owner's access token and tenant id."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    registered = httpx.post(
        f"{base}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "tenant_name": "Bench"},
        timeout=30,
    )
    registered.raise_for_status()
    tokens = httpx.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    tokens.raise_for_status()
    return tokens.json()["access_token"], uuid.UUID(registered.json()["tenant"]["id"])


async def insert_run(database: str, tenant_id: uuid.UUID) -> uuid.UUID:
    """A queued run (not final, so every read goes to the database)."""
    engine = create_async_engine(database)
    try:
        run = TaskRun(
            tenant_id=tenant_id,
            task="system.echo",
            queue="default",
            payload={"message": "bench"},
            state=RunState.QUEUED,
            attempts=0,
        )
        async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
            session.add(run)
        return run.id
    finally:
        await engine.dispose()


def uvicorn(app: str, port: int) -> list[str]:
    """The gateway's uvicorn settings (uvloop, httptools, one process, no access log)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host=127.0.0.1",
        f"--port={port}",
        "--no-access-log",
        "--no-server-header",
        "--log-level=warning",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)

    gateway_port, bare_port, fastapi_port = free_port(), free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    bare_url = f"http://127.0.0.1:{bare_port}"
    fastapi_url = f"http://127.0.0.1:{fastapi_port}"
    with scratch_database() as database:
        gateway_env = role_env(
            DATABASE_URL=database,
            REDIS_URL=DEFAULT_REDIS,
            API_HOST="127.0.0.1",
            API_PORT=str(gateway_port),
        )
        with (
            process([SWITCHYARD, "run", "api-gateway"], gateway_env) as gateway,
            process(uvicorn("bench.bare_app:app", bare_port), role_env()) as bare,
            process(uvicorn("bench.bare_app:fastapi_app", fastapi_port), role_env()) as fastapi,
        ):
            wait_http(f"{gateway_url}/health/ready", gateway)
            wait_http(f"{bare_url}/health/live", bare)
            wait_http(f"{fastapi_url}/health/live", fastapi)
            token, tenant_id = account(gateway_url)
            run_id = asyncio.run(insert_run(database, tenant_id))
            auth = {"Authorization": f"Bearer {token}"}
            targets: dict[str, tuple[str, dict[str, str]]] = {
                "bare /health/live": (f"{bare_url}/health/live", {}),
                "bare FastAPI /health/live (reference)": (f"{fastapi_url}/health/live", {}),
                "gateway /health/live": (f"{gateway_url}/health/live", {}),
                "gateway GET /api/v1/tasks/{id}": (f"{gateway_url}/api/v1/tasks/{run_id}", auth),
            }
            for url, headers in targets.values():  # warm-up: imports, pools, caches
                load(url, min(2.0, args.seconds), args.connections, headers)
            results: dict[str, list[Load]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, headers) in targets.items():
                    results[name].append(load(url, args.seconds, args.connections, headers))

    def figures(name: str, field: str) -> Figures:
        return Figures(tuple(getattr(result, field) for result in results[name]))

    baseline = "bare /health/live"
    base_rps = figures(baseline, "requests_per_second").median
    base_p99 = figures(baseline, "p99_ms").median
    rows = []
    for name in results:
        rps, p50, p99 = (figures(name, f) for f in ("requests_per_second", "p50_ms", "p99_ms"))
        rows.append([name, rps, p50, p99, ratio(rps.median, base_rps), ratio(p99.median, base_p99)])
    print_table(
        f"Gateway overhead: {args.rounds} rounds x {args.seconds:g} s, "
        f"{args.connections} connections (median ±half-range)",
        ["endpoint", "req/s", "p50 ms", "p99 ms", "req/s vs bare", "p99 vs bare"],
        rows,
    )
    live_rps = figures("gateway /health/live", "requests_per_second").median
    live_p99 = figures("gateway /health/live", "p99_ms").median
    print_targets(
        [
            [
                "/health/live throughput >= 0.8x bare",
                ratio(live_rps, base_rps),
                live_rps >= 0.8 * base_rps,
            ],
            [
                "/health/live p99 <= 1.5x bare",
                ratio(live_p99, base_p99),
                live_p99 <= 1.5 * base_p99,
            ],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
