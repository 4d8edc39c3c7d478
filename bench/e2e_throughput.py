"""End-to-end throughput: N no-op registered runs (`system.echo`) taken from the queue and run
to `succeeded` with the ledger fully updated, against N plain Celery no-op tasks, on the same
RabbitMQ, the same worker pool and concurrency, and the same reliability (acks late, prefetch
1, quorum queue, publisher confirms).

Both sides are queued first with no worker running (Switchyard's through the gateway's bulk
route, 1,000 runs a request, with the product's defaults: fair share on, so only the runs
admitted are in the queue; the plain ones with `apply_async`), then one worker drains the
queue. Rate = N / (end of the last task - start of the first), from the ledger's `started_at`
and `finished_at` for Switchyard and from timestamps kept in memory by the plain workers. A
Switchyard round in which any run ends other than `succeeded` fails the benchmark.

For reference, the floor: the same plain worker running `bench.ledger_noop`, the no-op inside
the least the ledger contract needs written straight on the drivers (claim, `started` event,
outcome, final event; bench/celery_baseline.py), on run rows inserted beforehand.

Targets (issue 33): Switchyard with its defaults >= 1.0x the plain Celery rate; with two worker
processes (--two-processes) >= 1.6x one. --fair-share-off adds a round with fair share off.
With --profile DIR, py-spy records the Switchyard worker while it drains, and a table shows
where a run's CPU goes, by library (bench/profile.py).
Switchyard's worker holds up to --switchyard-concurrency runs per process on its loop (the
product's default, 100); plain Celery's is prefork at --concurrency.
Usage: uv run python -m bench.e2e_throughput [--runs 5000] [--rounds 3] [--concurrency 2]
       [--two-processes] [--fair-share-off] [--no-floor] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from kombu import Connection
from sqlalchemy.engine import make_url

from bench.celery_baseline import QUEUE
from bench.gateway_overhead import account
from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    Figures,
    cpu_seconds,
    cpu_spent,
    free_port,
    print_table,
    print_targets,
    process,
    ratio,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)
from bench.profile import recording, shares

RUN = {"task": "system.echo", "payload": {"message": "bench"}}
SUBMITTERS = 16
TENANT_CAP = "TENANT_MAX_RUNS_IN_FLIGHT"
SERVICES = ("worker", "pool", "rabbitmq", "postgres", "redis")


@dataclass(frozen=True)
class Drain:
    rate: float  # runs per second, first start to last finish
    cpu: dict[str, float]  # CPU seconds per service while the worker ran
    runs: int

    def cpu_ms(self, service: str) -> float:
        return self.cpu.get(service, 0.0) * 1000 / self.runs


async def submit(
    base: str,
    token: str,
    runs: int,
    body: Mapping[str, object] = RUN,
    submitters: int = SUBMITTERS,
) -> list[uuid.UUID]:
    """Queue `runs` runs of `body` through the gateway, `submitters` at a time."""
    ids: list[uuid.UUID] = []
    left = iter(range(runs))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:

        async def submitter() -> None:
            for _ in left:
                answer = await client.post("/api/v1/tasks/run", json=body)
                answer.raise_for_status()
                ids.append(uuid.UUID(answer.json()["task_id"]))

        await asyncio.gather(*(submitter() for _ in range(submitters)))
    return ids


async def submit_bulk(
    base: str, token: str, runs: int, body: Mapping[str, object] = RUN, per_request: int = 1000
) -> list[uuid.UUID]:
    """Queue `runs` runs of `body` through the gateway's bulk route, `per_request` at a time."""
    ids: list[uuid.UUID] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        for start in range(0, runs, per_request):
            count = min(per_request, runs - start)
            answer = await client.post("/api/v1/tasks/runs", json={"runs": [body] * count})
            answer.raise_for_status()
            ids += [uuid.UUID(item["task_id"]) for item in answer.json()["runs"]]
    return ids


async def dead_letters(database: str, ids: list[uuid.UUID]) -> int:
    """How many of `ids` ended anywhere but `succeeded` (dead-lettered, failed, ...)."""
    url = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(url)
    try:
        lost = await connection.fetchval(
            "SELECT count(*) FROM task_runs WHERE id = ANY($1::uuid[]) AND state <> 'succeeded'",
            ids,
        )
    finally:
        await connection.close()
    return int(lost)


async def ledger_progress(database: str, ids: list[uuid.UUID]) -> tuple[int, float, float]:
    """How many of `ids` succeeded, and the span from first start to last finish (epoch s)."""
    url = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'succeeded') AS done,"
            " extract(epoch FROM min(started_at)) AS first,"
            " extract(epoch FROM max(finished_at)) AS last"
            " FROM task_runs WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await connection.close()
    assert row is not None
    return int(row["done"]), float(row["first"] or 0), float(row["last"] or 0)


def switchyard_round(
    database: str,
    broker: str,
    runs: int,
    concurrency: int,
    profile: Path | None = None,
    processes: int = 1,
    extra: Mapping[str, str] | None = None,
) -> Drain:
    """One Switchyard worker (`processes` worker processes) draining `runs` runs queued in
    bulk, with the product's defaults (fair share on) unless `extra` says otherwise; with
    `profile`, py-spy records the worker while it drains (bench/profile.py)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    common = {
        "DATABASE_URL": database,
        "REDIS_URL": DEFAULT_REDIS,
        "CELERY_BROKER_URL": broker,
        "LOG_LEVEL": "WARNING",
        **(extra or {}),
    }
    gateway_env = role_env(**common, API_HOST="127.0.0.1", API_PORT=str(port))
    with process([SWITCHYARD, "run", "api-gateway"], gateway_env) as gateway:
        wait_http(f"{base}/health/ready", gateway)
        token, _ = account(base)
        ids = asyncio.run(submit_bulk(base, token, runs))
    worker_env = role_env(
        **common,
        WORKER_CONCURRENCY=str(concurrency),
        WORKER_PROCESSES=str(processes),
        WORKER_QUEUES="default",
    )
    deadline = time.monotonic() + 600
    before: tuple[dict[str, float], int] | None = None
    # With fair share on, only the runs admitted are in the queue; the rest wait in the ledger.
    queued = queue_depth(broker, "default")
    with process([SWITCHYARD, "run", "worker"], worker_env) as worker, ExitStack() as spy:
        # Watched on the queue, not the ledger: polling the database would cost it CPU.
        while True:
            depth = queue_depth(broker, "default")
            if before is None and depth < queued:  # started up: CPU from here on is the runs'
                before = (cpu_seconds(), runs - (queued - depth))
                if profile is not None:
                    spy.enter_context(recording(worker.pid, profile))
            if not depth:
                done, first, last = asyncio.run(ledger_progress(database, ids))
                if done == runs:
                    break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Switchyard worker stopped with {runs - depth} runs done")
            time.sleep(0.05 if before is None else 0.2)
        spent = cpu_spent(before[0], cpu_seconds()) if before else {}
        spy.close()
    lost = asyncio.run(dead_letters(database, ids))
    if lost:
        raise RuntimeError(f"{lost} of {runs} runs did not end succeeded")
    # With many in flight the worker may take every message at once: count them all then.
    return Drain(runs / (last - first), spent, before[1] if before and before[1] else runs)


def queue_depth(broker: str, queue: str = QUEUE) -> int:
    """Messages ready in `queue` (not those a worker holds)."""
    with Connection(broker) as connection:
        channel = connection.channel()
        try:
            _, ready, _ = channel.queue_declare(queue, passive=True)
        finally:
            channel.close()
    return int(ready)


async def insert_runs(database: str, runs: int) -> list[uuid.UUID]:
    """`runs` queued rows for the floor, of the tenant the gateway's runs belong to."""
    url = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(url)
    try:
        tenant = await connection.fetchval("SELECT tenant_id FROM task_runs LIMIT 1")
        ids = [uuid.uuid4() for _ in range(runs)]
        await connection.copy_records_to_table(
            "task_runs",
            records=[(run, tenant, "bench.ledger_noop", QUEUE, "{}", "queued") for run in ids],
            columns=["id", "tenant_id", "task", "queue", "payload", "state"],
        )
    finally:
        await connection.close()
    return ids


def plain_round(broker: str, runs: int, concurrency: int, database: str | None = None) -> Drain:
    """One plain Celery worker draining `runs` queued no-op tasks; with `database`, the floor:
    `bench.ledger_noop` on run rows inserted there, timed from the ledger."""
    env = role_env(BENCH_BROKER_URL=broker)
    ids: list[uuid.UUID] = []
    if database is None:
        queue = f"for _ in range({runs}): noop.apply_async()"
    else:
        ids = asyncio.run(insert_runs(database, runs))
        env.update(BENCH_LEDGER_DATABASE_URL=database, BENCH_REDIS_URL=DEFAULT_REDIS)
        queue = "for run in sys.stdin.read().split(): ledger_noop.delay(run)"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys\nfrom bench.celery_baseline import ledger_noop, noop\n{queue}",
        ],
        env=env,
        input="\n".join(str(run) for run in ids),
        text=True,
        check=True,
    )
    with tempfile.TemporaryDirectory() as records:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_baseline",
            "--quiet",
            "worker",
            "--loglevel=WARNING",
            f"--queues={QUEUE}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
        ]
        deadline = time.monotonic() + 600
        before: tuple[dict[str, float], int] | None = None
        with process(command, {**env, "BENCH_RECORD_DIR": records}) as worker:
            while depth := queue_depth(broker):
                if before is None and depth < runs:  # started up (a few may be in flight)
                    before = (cpu_seconds(), depth)
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("plain Celery worker stopped before the queue was empty")
                time.sleep(0.05 if before is None else 0.2)
            time.sleep(1)  # the last prefetched messages; the warm shutdown finishes them too
            assert before is not None
            spent = cpu_spent(before[0], cpu_seconds())
        ran = [json.loads(path.read_text()) for path in Path(records).glob("*.json")]
    if database is not None:
        done, first, last = asyncio.run(ledger_progress(database, ids))
        if done != runs:
            raise RuntimeError(f"the floor's workers took {done} runs to succeeded, not {runs}")
        return Drain(runs / (last - first), spent, before[1])
    count = sum(item["count"] for item in ran)
    if count != runs:
        raise RuntimeError(f"plain Celery workers report {count} tasks run, not {runs}")
    first = float(min(item["first_start"] for item in ran))
    last = float(max(item["last_end"] for item in ran))
    return Drain(runs / (last - first), spent, before[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="plain Celery's prefork")
    parser.add_argument(
        "--switchyard-concurrency",
        type=int,
        default=100,
        help="Switchyard's runs in flight on its one worker process (its default)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a directory: py-spy records Switchyard's worker in each round, and a table "
        "shows where a run's CPU goes",
    )
    parser.add_argument(
        "--two-processes", action="store_true", help="also Switchyard with WORKER_PROCESSES=2"
    )
    parser.add_argument(
        "--fair-share-off", action="store_true", help="also Switchyard with fair share off"
    )
    parser.add_argument("--no-floor", action="store_true", help="leave the floor out")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    variants: list[tuple[str, int, dict[str, str]]] = [("defaults", 1, {})]
    if args.two_processes:
        variants.append(("WORKER_PROCESSES=2", 2, {}))
    if args.fair_share_off:
        # Both spellings: FAIR_SHARE since issue 33, a cap of 0 before it.
        variants.append(("fair share off", 1, {"FAIR_SHARE": "false", TENANT_CAP: "0"}))
    switchyard: dict[str, list[Drain]] = {name: [] for name, _, _ in variants}
    plain: list[Drain] = []
    floor: list[Drain] = []
    with scratch_database() as database, scratch_vhost() as broker:
        for round_ in range(args.rounds):
            plain.append(plain_round(broker, args.runs, args.concurrency))
            for name, processes, extra in variants:
                profile = (
                    args.profile / f"worker-{round_}.txt"
                    if args.profile is not None and name == "defaults"
                    else None
                )
                switchyard[name].append(
                    switchyard_round(
                        database,
                        broker,
                        args.runs,
                        args.switchyard_concurrency,
                        profile,
                        processes,
                        extra,
                    )
                )
            if not args.no_floor:
                floor.append(plain_round(broker, args.runs, args.concurrency, database))

    plain_rate = Figures(tuple(drain.rate for drain in plain))
    rates = {
        name: Figures(tuple(drain.rate for drain in drains)) for name, drains in switchyard.items()
    }
    switchyard_rate = rates["defaults"]
    rows: list[list[object]] = [["plain Celery no-op (baseline)", plain_rate, "1.00x"]]
    if floor:
        floor_rate = Figures(tuple(drain.rate for drain in floor))
        rows.append(
            [
                "same + ledger contract on raw drivers (floor)",
                floor_rate,
                ratio(floor_rate.median, plain_rate.median),
            ]
        )
    rows += [
        [
            f"Switchyard system.echo, ledger to succeeded, {name}",
            rate,
            ratio(rate.median, plain_rate.median),
        ]
        for name, rate in rates.items()
    ]
    print_table(
        f"End-to-end throughput: {args.runs} runs of one tenant queued in bulk, {args.rounds} "
        f"rounds, prefork concurrency {args.concurrency}; Switchyard "
        f"{args.switchyard_concurrency} in flight per process, no run lost (median ±half-range)",
        ["what", "runs/s", "vs plain Celery"],
        rows,
    )

    def cpu(drains: list[Drain], service: str) -> str:
        return f"{Figures(tuple(drain.cpu_ms(service) for drain in drains)).median:.2f}"

    print_table(
        "CPU milliseconds per run while the worker drained (median; worker = main process, "
        "pool = its children)",
        ["what", *SERVICES, "total"],
        [
            [
                name,
                *(cpu(drains, service) for service in SERVICES),
                f"{Figures(tuple(sum(d.cpu_ms(s) for s in SERVICES) for d in drains)).median:.2f}",
            ]
            for name, drains in (
                ("plain Celery", plain),
                *((("floor (raw drivers)", floor),) if floor else ()),
                *((f"Switchyard, {name}", drains) for name, drains in switchyard.items()),
            )
        ],
    )
    if args.profile is not None:
        worker_ms = Figures(tuple(d.cpu_ms("worker") for d in switchyard["defaults"])).median
        measured = [shares(path) for path in sorted(args.profile.glob("worker-*.txt"))]
        names = sorted({name for each in measured for name in each})
        rows = [
            [name, f"{share * 100:.1f} %", f"{share * worker_ms:.2f}"]
            for name, share in sorted(
                ((name, sum(m.get(name, 0.0) for m in measured) / len(measured)) for name in names),
                key=lambda item: -item[1],
            )
        ]
        print_table(
            f"Where a run's CPU goes in Switchyard's worker ({worker_ms:.2f} ms per run; py-spy, "
            "innermost frame's library, mean over the rounds)",
            ["library", "share", "ms per run"],
            rows,
        )
    targets = [
        [
            "Switchyard, defaults, >= 1.0x plain Celery (issue 33)",
            ratio(switchyard_rate.median, plain_rate.median),
            switchyard_rate.median >= plain_rate.median,
        ]
    ]
    if "WORKER_PROCESSES=2" in rates:
        two = rates["WORKER_PROCESSES=2"].median
        targets.append(
            [
                "two worker processes >= 1.6x one (issue 33)",
                ratio(two, switchyard_rate.median),
                two >= 1.6 * switchyard_rate.median,
            ]
        )
    print_targets(targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
