"""The ledger at scale: every hot query, and submit and get-run through the API, at 10,000 runs
and at 10 million, in one run; then the retention job removing a million expired runs while
the API is measured again.

One scratch database grows. First `--small` runs of history over `--small-tenants` tenants
(1,000 each: a page of their failed runs, or of a week's runs, is full at both sizes) and their
live runs (bench.ledger_queries: 4 queued, 2 waiting for their share, 1 started), measured;
then history seeded on to `--runs` over all `--tenants` (secondary indexes dropped and built
again: minutes, not hours) and the other tenants' live runs, measured again on the same
tenants, now holding 11 times the runs among 1,000 times as many. Hot queries call the
product's own functions on random runs of those tenants, each in a transaction rolled back
after; a retention batch is timed per 1,000 rows it removes. The API is a real gateway process
(`switchyard run api-gateway`) on RabbitMQ and Redis, asked one request at a time: submit
(`POST /tasks/run` with an idempotency key) and get-run (`GET /tasks/{id}` of a final run never
asked for before, so the run view's cache does not answer it). Retention: one pass of
`platform.runs.retention.expire` (what beat runs) in a process of its own, while the API is asked
the same mix as before it.

Targets: every figure at 10 M within 2x of its figure at 10 k (p50 and p99); the API's p99
while the retention job runs within 1.5x of its p99 before.
Usage: uv run python -m bench.ledger_scale [--runs 10000000] [--small 10000] [--tenants 1000]
       [--small-tenants 10] [--samples 1000] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench import ledger_queries as hot
from bench.console_runs import account
from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    free_port,
    percentile,
    print_table,
    print_targets,
    process,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)
from switchyard.platform.runs import retention
from switchyard.settings import Settings

SCALE_TARGET = 2.0
RETENTION_TARGET = 1.5


@dataclass(frozen=True)
class Latency:
    p50: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(percentile(samples, 0.50), percentile(samples, 0.99))


def label(query: hot.HotQuery) -> str:
    return f"{query.name} (per 1,000 rows)" if query.per_rows else query.name


async def time_queries(
    engine: AsyncEngine, samples: int, tenants: list[uuid.UUID]
) -> dict[str, Latency]:
    """Each hot query on `samples` random runs of `tenants`, in ms."""
    chosen = await hot.samples(engine, samples, tenants)
    figures: dict[str, Latency] = {}
    for query in hot.HOT_QUERIES:
        timings = []
        for sample in chosen:
            async with hot.rolled_back(engine) as (connection, session):
                started = time.perf_counter()
                result = await query.call(connection, session, sample)
                elapsed = (time.perf_counter() - started) * 1000
            if query.per_rows:
                removed = int(getattr(result, "rowcount", 0) or 0)
                if removed:
                    timings.append(elapsed * 1000 / removed)
            else:
                timings.append(elapsed)
        if timings:
            figures[label(query)] = Latency.of(timings)
    return figures


async def plans(
    engine: AsyncEngine, tenants: list[uuid.UUID]
) -> dict[str, tuple[set[str], set[str]]]:
    """Per hot query: the indexes its plans use, and the tables they scan sequentially."""
    (sample,) = await hot.samples(engine, 1, tenants)
    found = {}
    for query in hot.HOT_QUERIES:
        explained = await hot.plan(engine, query, sample)
        found[label(query)] = (hot.indexes_used(explained), hot.sequential_scans(explained))
    return found


class Api:
    """One request at a time against the gateway, as the tenant `headers` authorise."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    async def submit(self) -> float:
        started = time.perf_counter()
        answer = await self.client.post(
            "/api/v1/tasks/run",
            json={"task": "system.echo", "payload": {"message": "hi"}},
            headers={**self.headers, "Idempotency-Key": f"bench-{uuid.uuid4()}"},
        )
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 202:
            raise RuntimeError(f"submit: {answer.status_code} {answer.text}")
        return elapsed

    async def get(self, run_id: uuid.UUID) -> float:
        started = time.perf_counter()
        answer = await self.client.get(f"/api/v1/tasks/{run_id}", headers=self.headers)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"get run: {answer.status_code} {answer.text}")
        return elapsed

    async def mix(self, run_ids: Iterable[uuid.UUID]) -> tuple[list[float], list[float]]:
        """A submit and a get-run per run id, alternately."""
        submits, gets = [], []
        for run_id in run_ids:
            submits.append(await self.submit())
            gets.append(await self.get(run_id))
        return submits, gets


async def final_runs(engine: AsyncEngine, tenant_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """Distinct final runs of the tenant, in random order."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT id FROM task_runs WHERE tenant_id = :tenant AND state = 'succeeded' "
                "AND finished_at > now() - interval '29 days' ORDER BY random() LIMIT :n"
            ),
            {"tenant": tenant_id, "n": count},
        )
        return list(rows.scalars())


async def sizes(engine: AsyncEngine) -> dict[str, float]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT pg_table_size('task_runs'), pg_indexes_size('task_runs'), "
                    "(SELECT count(*) FROM task_runs), pg_total_relation_size('dead_letters')"
                )
            )
        ).one()
    table, indexes, rows, letters = (float(value) for value in row)
    return {"table": table, "indexes": indexes, "rows": rows, "dead_letters": letters}


def expire_in_a_process(database: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.ledger_scale", "--expire", database],
        stdout=subprocess.PIPE,
        text=True,
    )


async def expire_only(database: str) -> None:
    """One retention pass, as beat runs it; prints what it removed, and when each kind's
    phase started and ended (wall clock, for the requests measured meanwhile)."""
    engine = create_async_engine(database, pool_size=1, max_overflow=0)
    settings = Settings(_env_file=None, environment="test")
    started = time.perf_counter()
    phases = []
    for batch in retention.batches(settings):
        begun = time.time()
        removed = await retention.drain(engine, batch, settings.retention_rest_ratio)
        phases.append({"kind": batch.kind, "start": begun, "end": time.time(), "removed": removed})
    seconds = time.perf_counter() - started
    await engine.dispose()
    print(json.dumps({"seconds": seconds, "phases": phases}))


async def seed_small(engine: AsyncEngine, args: argparse.Namespace, now: datetime) -> None:
    started = time.perf_counter()
    await hot.seed_runs(engine, args.small, tenants=args.small_tenants, now=now)
    await hot.seed_live(engine, 0, args.small_tenants)
    # The API's tenant gets runs enough to ask for a different one each time (the run view's
    # cache would answer a run asked for again).
    await seed_api_runs(engine, 3 * args.requests, args.runs, now)
    await hot.seed_extras(engine)
    print(f"seeded {args.small:,} runs in {time.perf_counter() - started:.1f} s")


async def seed_api_runs(engine: AsyncEngine, runs: int, first: int, now: datetime) -> None:
    await hot.seed_runs(
        engine, runs, first=first, tenants=1, now=now, slug_prefix=f"{hot.TENANT_SLUG}api"
    )


async def seed_large(engine: AsyncEngine, args: argparse.Namespace, now: datetime) -> float:
    started = time.perf_counter()

    def progress(done: int) -> None:
        print(f"  {args.small + done:,} runs, {time.perf_counter() - started:.0f} s")

    await hot.seed_runs(
        engine,
        args.runs - args.small,
        first=args.small,
        tenants=args.tenants,
        now=now,
        rebuild_indexes=True,
        progress=progress,
    )
    await hot.seed_live(engine, args.small_tenants, args.tenants)
    # ...and, for the retention pass, runs enough to ask for a new one all along it.
    await seed_api_runs(engine, 100 * args.requests, args.runs + 3 * args.requests, now)
    await hot.seed_extras(engine)
    seeded = time.perf_counter() - started
    print(f"seeded on to {args.runs:,} runs in {seeded:.0f} s")
    return seeded


Timed = list[tuple[float, float]]  # (wall clock when a request ended, its ms)


async def while_expiring(
    api: Api, database: str, run_ids: list[uuid.UUID]
) -> tuple[Timed, dict[str, Any]]:
    """The API's mix while a retention pass runs (until it ends, or the run ids do)."""
    expiring = expire_in_a_process(database)
    during: Timed = []
    for run_id in run_ids:
        if expiring.poll() is not None:
            break
        submit, get = await api.mix([run_id])
        during.append((time.time(), submit[0]))
        during.append((time.time(), get[0]))
    stdout, _ = expiring.communicate()
    return during, json.loads(stdout.strip().splitlines()[-1])


async def measure(args: argparse.Namespace, database: str, broker: str) -> None:
    port = free_port()
    env = role_env(
        DATABASE_URL=database,
        REDIS_URL=DEFAULT_REDIS,
        CELERY_BROKER_URL=broker,
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        ACCESS_TOKEN_MINUTES="1440",  # noqa: S106 - a lifetime: one sign-in outlives the run
    )
    engine = create_async_engine(database, pool_size=2)
    hot.install_capture(engine)
    with process([SWITCHYARD, "run", "api-gateway"], env) as gateway:
        wait_http(f"http://127.0.0.1:{port}/health/ready", gateway)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            tenant_id, headers = await account(client, "Ledger")
            api = Api(client, headers)
            async with engine.begin() as connection:  # one of the seeded tenants, uncapped
                await connection.execute(
                    text(
                        "UPDATE tenants SET slug = :slug, max_runs_in_flight = 100000 "
                        "WHERE id = :id"
                    ),
                    {"slug": f"{hot.TENANT_SLUG}api", "id": tenant_id},
                )
            tenants = await hot.seed_tenants(engine, args.tenants - 1)
            measured = tenants[: args.small_tenants]  # the same tenants at both sizes
            now = datetime.now(UTC)

            await seed_small(engine, args, now)
            small_queries = await time_queries(engine, args.samples, measured)
            ids = await final_runs(engine, tenant_id, args.requests)
            await api.mix(ids[:20])  # warm-up
            small_api = await api.mix(ids)

            seeded = await seed_large(engine, args, now)
            size = await sizes(engine)
            big_queries = await time_queries(engine, args.samples, measured)
            big_plans = await plans(engine, measured)
            ids = await final_runs(engine, tenant_id, 110 * args.requests)
            await api.mix(ids[:20])  # warm-up
            big_api = await api.mix(ids[20 : 20 + args.requests])
            during, expired = await while_expiring(api, database, ids[20 + args.requests :])
            after = await sizes(engine)
    await engine.dispose()
    report(args, small_queries, big_queries, big_plans, small_api, big_api, during, expired)
    report_sizes(args, size, after, seeded)


def report(
    args: argparse.Namespace,
    small: dict[str, Latency],
    big: dict[str, Latency],
    big_plans: dict[str, tuple[set[str], set[str]]],
    small_api: tuple[list[float], list[float]],
    big_api: tuple[list[float], list[float]],
    during: Timed,
    expired: dict[str, Any],
) -> None:
    small["API: submit"], big["API: submit"] = Latency.of(small_api[0]), Latency.of(big_api[0])
    small["API: get run"], big["API: get run"] = Latency.of(small_api[1]), Latency.of(big_api[1])
    rows = []
    worst = 0.0
    for name, a in small.items():
        b = big[name]
        scale = max(b.p50 / a.p50, b.p99 / a.p99)
        worst = max(worst, scale)
        used, scanned = big_plans.get(name, (set(), set()))
        plan = ", ".join(sorted(used - {"pk_tenants"}))
        if scanned:
            plan += f" (seq: {', '.join(sorted(scanned))})"
        rows.append(
            [
                name,
                f"{a.p50:.2f}",
                f"{a.p99:.2f}",
                f"{b.p50:.2f}",
                f"{b.p99:.2f}",
                f"{b.p50 / a.p50:.2f}x",
                f"{b.p99 / a.p99:.2f}x",
                plan,
            ]
        )
    print_table(
        f"Hot paths at {args.small:,} runs ({args.small_tenants:,} tenants) and {args.runs:,} "
        f"({args.tenants:,} tenants), ms, on the same {args.small_tenants:,} tenants "
        f"({args.samples} samples a query, {args.requests} requests a call)",
        ["query", "p50 small", "p99 small", "p50 large", "p99 large", "p50 x", "p99 x", "plan"],
        rows,
    )
    before = Latency.of(big_api[0] + big_api[1])
    phases = {phase["kind"]: phase for phase in expired["phases"]}
    table = [
        [
            "before the pass",
            "",
            "",
            f"{len(big_api[0]) * 2:,}",
            "",
            f"{before.p50:.2f}",
            f"{before.p99:.2f}",
            "1.00x",
        ]
    ]
    ratios: dict[str, float] = {}
    spans = [
        *phases.values(),
        {
            "kind": "the whole pass",
            "removed": None,
            "start": expired["phases"][0]["start"],
            "end": expired["phases"][-1]["end"],
        },
    ]
    for phase in spans:
        inside = [ms for at, ms in during if phase["start"] <= at <= phase["end"]]
        seconds = phase["end"] - phase["start"]
        if not inside:
            table.append([phase["kind"], "", f"{seconds:.0f}", "0", "", "", "", ""])
            continue
        figures = Latency.of(inside)
        ratios[phase["kind"]] = figures.p99 / before.p99
        removed = phase["removed"]
        table.append(
            [
                phase["kind"],
                "" if removed is None else f"{removed:,}",
                f"{seconds:.0f}",
                f"{len(inside):,}",
                "" if removed is None else f"{removed / max(seconds, 1e-9):,.0f}",
                f"{figures.p50:.2f}",
                f"{figures.p99:.2f}",
                f"{ratios[phase['kind']]:.2f}x",
            ]
        )
    print_table(
        "Retention: one pass (RETENTION_BATCH_ROWS, RETENTION_REST_RATIO as set) while the API "
        "is asked; API ms, submit and get-run together",
        [
            "phase",
            "removed",
            "seconds",
            "API requests",
            "rows/s",
            "API p50",
            "API p99",
            "p99 vs before",
        ],
        table,
    )
    runs_ratio = ratios.get("runs", float("inf"))
    print_targets(
        [
            (
                f"every hot figure at {args.runs:,} within {SCALE_TARGET:g}x of {args.small:,}",
                f"worst {worst:.2f}x",
                worst <= SCALE_TARGET,
            ),
            (
                f"API p99 while retention deletes the runs within {RETENTION_TARGET:g}x of before",
                f"{runs_ratio:.2f}x",
                runs_ratio <= RETENTION_TARGET,
            ),
            (
                f"API p99 over the whole pass within {RETENTION_TARGET:g}x of before",
                f"{ratios.get('the whole pass', float('inf')):.2f}x",
                ratios.get("the whole pass", float("inf")) <= RETENTION_TARGET,
            ),
        ]
    )


def report_sizes(
    args: argparse.Namespace, size: dict[str, float], after: dict[str, float], seconds: float
) -> None:
    per_row = (size["table"] + size["indexes"]) / size["rows"]
    print_table(
        "Disk of task_runs",
        ["what", "figure"],
        [
            ["rows", f"{size['rows']:,.0f}"],
            ["table (heap + TOAST)", f"{size['table'] / 2**30:.2f} GiB"],
            ["indexes", f"{size['indexes'] / 2**30:.2f} GiB"],
            ["bytes per run, with its indexes", f"{per_row:,.0f}"],
            ["seeding", f"{args.runs - args.small:,} runs in {seconds:.0f} s"],
            ["rows after retention", f"{after['rows']:,.0f}"],
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument(
        "--small-tenants", type=int, default=10, help="tenants holding the small ledger's runs"
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--expire", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.expire:
        asyncio.run(expire_only(args.expire))
        return 0
    with scratch_database() as database, scratch_vhost() as broker:
        asyncio.run(measure(args, database, broker))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
