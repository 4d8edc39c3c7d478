"""Task submission: `POST /api/v1/tasks/run` (authenticated, validated, ledger row, confirmed
publish) on the gateway in one process, against two baselines in the same run on the same
RabbitMQ: Flower's `POST /api/task/async-apply/<task>` (Flower from PyPI, one process, loaded
the same way) and a plain `apply_async` loop in one process (confirmed publishes, no HTTP).
For reference (bench/bare_submit.py): a bare FastAPI route that validates the same body and
publishes the same way (what the framework and a confirmed publish alone cost), and the same
route doing the least the contract needs straight on the drivers (token and holder checked,
limits counted, ledger row before and `published_at` after the publish): the floor for any
implementation of it on this machine.

Bulk: `POST /api/v1/tasks/runs`, 10,000 runs in requests of 1,000 (one connection, one
request after the other), each run with the whole contract (validated, in the ledger,
confirmed by the broker), by a tenant with no fair-share cap (every run is published).

Targets: >= 2x Flower's requests per second; >= 0.5x the plain publish loop (issue 23:
single >= 1.0x Flower; bulk >= 3x the plain loop's runs/s).
Usage: uv run python -m bench.task_submission [--rounds 3] [--seconds 8] [--connections 16]
       [--tenant-cap 1000] [--bulk-runs 10000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.gateway_overhead import account, uvicorn
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
    scratch_vhost,
    wait_http,
)

RUN = json.dumps({"task": "system.echo", "payload": {"message": "bench"}})


def publish_loop(broker: str, seconds: float) -> float:
    """Messages per second of a plain apply_async loop (confirmed), in a child process."""
    code = (
        "import time,sys\n"
        "from bench.celery_baseline import noop\n"
        "noop.apply_async()\n"
        f"until=time.perf_counter()+{seconds}\n"
        "n=0\nstart=time.perf_counter()\n"
        "while time.perf_counter()<until:\n"
        "    noop.apply_async(); n+=1\n"
        "print(n/(time.perf_counter()-start))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "BENCH_BROKER_URL": broker},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def uncap(database: str, tenant_id: uuid.UUID) -> None:
    """A cap no run reaches for one tenant: every run it submits is admitted and published
    (admission still counts its runs in flight, as it would for any tenant)."""

    async def update() -> None:
        engine = create_async_engine(database)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE tenants SET max_runs_in_flight = 1000000000 WHERE id = :id"),
                    {"id": tenant_id},
                )
        finally:
            await engine.dispose()

    asyncio.run(update())


def drain(database: str, tenant_id: uuid.UUID, broker: str) -> None:
    """What a worker would have done with the bulk tenant's runs so far (no worker runs
    here): final in the ledger, gone from the queue. Each bulk round then starts as the
    first did, not behind the runs in flight of the rounds before (admission counts them)."""

    async def finish() -> None:
        engine = create_async_engine(database)
        try:
            async with engine.begin() as connection:
                # Locked in id order, as every writer of the ledger locks them: the gateway
                # may still be marking the round's runs published (a batch in id order).
                await connection.execute(
                    text(
                        "WITH locked AS (SELECT id FROM task_runs WHERE tenant_id = :id "
                        "AND state = 'queued' ORDER BY id FOR UPDATE) "
                        "UPDATE task_runs SET state = 'succeeded', finished_at = now() "
                        "FROM locked WHERE task_runs.id = locked.id AND task_runs.state = 'queued'"
                    ),
                    {"id": tenant_id},
                )
        finally:
            await engine.dispose()

    asyncio.run(finish())
    vhost = urlsplit(broker).path.lstrip("/") or "/"
    subprocess.run(
        [
            shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl",
            "purge_queue",
            "-q",
            "-p",
            vhost,
            "default",
        ],
        check=False,
        timeout=60,
    )


def bulk(url: str, token: str, runs: int, batch: int) -> float:
    """Runs per second of `runs` runs submitted in requests of `batch`, one after another."""
    run = {"task": "system.echo", "payload": {"message": "bench"}}
    body = json.dumps({"runs": [run] * batch}).encode()  # encoded once: the load is not measured
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        for _ in range(runs // batch):
            answer = client.post(f"{url}/api/v1/tasks/runs", content=body, headers=headers)
            if answer.status_code != 202:
                raise RuntimeError(f"bulk answered {answer.status_code}: {answer.text[:300]}")
        return (runs // batch) * batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--tenant-cap", type=int, default=1000, help="TENANT_MAX_RUNS_IN_FLIGHT of the gateway"
    )
    parser.add_argument("--bulk-runs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)

    gateway_port, flower_port, bare_port = free_port(), free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    flower_url = f"http://127.0.0.1:{flower_port}"
    bare_url = f"http://127.0.0.1:{bare_port}"
    results: dict[str, list[float]] = {
        "gateway": [],
        "flower": [],
        "bare": [],
        "floor": [],
        "loop": [],
        "bulk": [],
    }
    latency: dict[str, list[Load]] = {"gateway": [], "flower": [], "bare": [], "floor": []}
    with scratch_database() as database, scratch_vhost() as broker:
        gateway_env = role_env(
            DATABASE_URL=database,
            REDIS_URL=DEFAULT_REDIS,
            CELERY_BROKER_URL=broker,
            API_HOST="127.0.0.1",
            API_PORT=str(gateway_port),
            # Fair share: admission counts the tenant's runs in flight up to its cap; a run
            # past the cap is stored and not published (cheaper). 0: fair share off.
            TENANT_MAX_RUNS_IN_FLIGHT=str(args.tenant_cap),
        )
        flower_env = role_env(BENCH_BROKER_URL=broker, FLOWER_UNAUTHENTICATED_API="true")
        bare_env = {
            **flower_env,
            "BENCH_LEDGER_DATABASE_URL": database,
            "BENCH_REDIS_URL": DEFAULT_REDIS,
        }
        flower_command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_baseline",
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
            "--logging=warning",
        ]
        with (
            process([SWITCHYARD, "run", "api-gateway"], gateway_env) as gateway,
            process(flower_command, flower_env) as flower,
            process(uvicorn("bench.bare_submit:app", bare_port), bare_env) as bare,
        ):
            wait_http(f"{gateway_url}/health/ready", gateway)
            wait_http(f"{flower_url}/healthcheck", flower)
            wait_http(f"{bare_url}/docs", bare)
            token, _ = account(gateway_url)
            bulk_token, bulk_tenant = account(gateway_url)
            uncap(database, bulk_tenant)
            bulk(gateway_url, bulk_token, args.batch, args.batch)  # warm-up
            json_headers = {"Content-Type": "application/json"}
            targets = {
                "gateway": (
                    f"{gateway_url}/api/v1/tasks/run",
                    {**json_headers, "Authorization": f"Bearer {token}"},
                    RUN,
                ),
                "flower": (f"{flower_url}/api/task/async-apply/bench.noop", json_headers, "{}"),
                "bare": (
                    f"{bare_url}/run",
                    {**json_headers, "Authorization": "Bearer anything"},
                    RUN,
                ),
                "floor": (
                    f"{bare_url}/run-ledger",
                    {**json_headers, "Authorization": f"Bearer {token}"},
                    RUN,
                ),
            }
            for url, headers, body in targets.values():  # warm-up
                load(url, min(2.0, args.seconds), args.connections, headers, body)
            for _ in range(args.rounds):
                for name, (url, headers, body) in targets.items():
                    measured = load(url, args.seconds, args.connections, headers, body)
                    results[name].append(measured.requests_per_second)
                    latency[name].append(measured)
                results["loop"].append(publish_loop(broker, args.seconds))
                drain(database, bulk_tenant, broker)
                results["bulk"].append(bulk(gateway_url, bulk_token, args.bulk_runs, args.batch))
                time.sleep(0.5)

    gateway_rps = Figures(tuple(results["gateway"]))
    flower_rps = Figures(tuple(results["flower"]))
    loop_rate = Figures(tuple(results["loop"]))
    bare_rps = Figures(tuple(results["bare"]))
    floor_rps = Figures(tuple(results["floor"]))
    bulk_rps = Figures(tuple(results["bulk"]))

    def p99(name: str) -> Figures:
        return Figures(tuple(item.p99_ms for item in latency[name]))

    print_table(
        f"Task submission: {args.rounds} rounds x {args.seconds:g} s, "
        f"{args.connections} connections (median ±half-range)",
        ["what", "runs/s", "p99 ms", "vs Flower", "vs plain loop"],
        [
            ["plain apply_async loop (1 process)", loop_rate, "", "", "1.00x"],
            [
                "Flower async-apply",
                flower_rps,
                p99("flower"),
                "1.00x",
                ratio(flower_rps.median, loop_rate.median),
            ],
            [
                "bare FastAPI POST /run (reference)",
                bare_rps,
                p99("bare"),
                ratio(bare_rps.median, flower_rps.median),
                ratio(bare_rps.median, loop_rate.median),
            ],
            [
                "same + contract on raw drivers (floor)",
                floor_rps,
                p99("floor"),
                ratio(floor_rps.median, flower_rps.median),
                ratio(floor_rps.median, loop_rate.median),
            ],
            [
                "gateway POST /api/v1/tasks/run",
                gateway_rps,
                p99("gateway"),
                ratio(gateway_rps.median, flower_rps.median),
                ratio(gateway_rps.median, loop_rate.median),
            ],
            [
                f"gateway POST /api/v1/tasks/runs ({args.bulk_runs:,} in {args.batch:,}s)",
                bulk_rps,
                "",
                ratio(bulk_rps.median, flower_rps.median),
                ratio(bulk_rps.median, loop_rate.median),
            ],
        ],
    )
    print_targets(
        [
            [
                "gateway >= 2x Flower",
                ratio(gateway_rps.median, flower_rps.median),
                gateway_rps.median >= 2 * flower_rps.median,
            ],
            [
                "gateway >= 0.5x plain publish loop",
                ratio(gateway_rps.median, loop_rate.median),
                gateway_rps.median >= 0.5 * loop_rate.median,
            ],
            [
                "gateway >= 1.0x Flower (issue 23)",
                ratio(gateway_rps.median, flower_rps.median),
                gateway_rps.median >= flower_rps.median,
            ],
            [
                "bulk >= 3x plain publish loop (issue 23)",
                ratio(bulk_rps.median, loop_rate.median),
                bulk_rps.median >= 3 * loop_rate.median,
            ],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
