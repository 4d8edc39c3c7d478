"""I/O-bound runs: N runs of a task that awaits a 1 s upstream call (a local HTTP server that
answers after 1 s, as an LLM API would), drained by one worker process, against plain Celery
prefork at its default concurrency (2) and at 8, plain Celery `threads`, arq and taskiq at the
same in-flight count as Switchyard (arq and taskiq on their own Redis broker).

Every system's runs are queued first with no worker running (Switchyard's through the REST API
into the ledger), then one worker drains them. Each run records when its call started and
ended in a Redis list (the same cost everywhere). Rate = runs / (last end - first start);
time in queue = a run's start - the first start; RSS is the worker's process tree at its
largest, sampled while it drains (for Switchyard also the worker process alone); PostgreSQL
connections are the worker process's, at their most. Prefork drains fewer runs (at 2 runs/s,
1,000 would take minutes): its rate is what is compared.

Targets: 1,000 runs drained in <= 12 s; >= 1.0x arq, taskiq and Celery threads at equal
in-flight count; >= 50x Celery prefork at its default; worker RSS <= 250 MB with 200 in
flight; PostgreSQL connections <= pool size + overflow.
Usage: uv run python -m bench.io_bound [--runs 1000] [--in-flight 200] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psutil
import redis

from bench.e2e_throughput import queue_depth
from bench.gateway_overhead import account
from bench.harness import (
    DEFAULT_REDIS,
    ROOT,
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

UPSTREAM_DELAY = 1.0
SUBMITTERS = 16
POOL_SIZE, MAX_OVERFLOW = 10, 10  # Switchyard's defaults
COMPETITORS = ROOT / "bench" / "competitors"
COMPETITOR_REDIS = "redis://127.0.0.1:6379/14"


@dataclass(frozen=True)
class Drain:
    system: str
    runs: int
    rate: float
    queue_p50: float
    queue_p99: float
    rss_mb: float
    process_rss_mb: float = 0.0
    connections: int = 0

    @property
    def seconds(self) -> float:
        return self.runs / self.rate


def times(store: redis.Redis, key: str) -> list[tuple[float, float]]:
    return [
        (float(start), float(end))
        for start, end in (str(item).split() for item in store.lrange(key, 0, -1))
    ]


class Sampler:
    """The worker's process tree at its largest, and its PostgreSQL connections."""

    def __init__(self, root: int, database_port: int | None = None) -> None:
        self.root = psutil.Process(root)
        self.database_port = database_port
        self.rss = 0.0
        self.process_rss = 0.0
        self.connections = 0

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
            self.rss = max(self.rss, sum(p.memory_info().rss for p in tree) / 2**20)
            if self.database_port is not None:
                for child in self.root.children():
                    self.process_rss = max(self.process_rss, child.memory_info().rss / 2**20)
                    held = sum(
                        1
                        for c in child.net_connections("tcp")
                        if c.raddr and c.raddr.port == self.database_port
                    )
                    self.connections = max(self.connections, held)
        except psutil.NoSuchProcess:
            pass


def drained(
    system: str,
    store: redis.Redis,
    key: str,
    runs: int,
    worker: subprocess.Popen[bytes],
    sampler: Sampler,
    timeout: float = 900,
) -> Drain:
    deadline = time.monotonic() + timeout
    done, progressed = 0, time.monotonic()
    while done < runs:
        sampler.sample()
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{system}: worker stopped with {done} of {runs} runs")
        if time.monotonic() - progressed > 60:
            raise RuntimeError(f"{system}: no run finished for 60 s; {done} of {runs} did")
        time.sleep(0.1)
        now = int(store.llen(key))
        if now > done:
            done, progressed = now, time.monotonic()
    ran = times(store, key)
    first = min(start for start, _ in ran)
    last = max(end for _, end in ran)
    waits = [start - first for start, _ in ran]
    if os.environ.get("BENCH_TIMELINE"):  # starts per quarter second, to see the waves
        buckets = collections.Counter(int((start - first) * 4) for start, _ in ran)
        print(system, [buckets.get(i, 0) for i in range(max(buckets) + 1)], file=sys.stderr)
    return Drain(
        system,
        runs,
        runs / (last - first),
        percentile(waits, 0.5),
        percentile(waits, 0.99),
        sampler.rss,
        sampler.process_rss,
        sampler.connections,
    )


@contextmanager
def upstream() -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "bench.upstream", f"--port={port}"]
    with process([*command, f"--delay={UPSTREAM_DELAY}"], role_env()) as server:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/", json={}, timeout=5)
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the upstream stand-in did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1/chat"


async def submit(base: str, token: str, runs: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    left = iter(range(runs))
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:

        async def submitter() -> None:
            for n in left:
                body = {"task": "bench.upstream_call", "payload": {"n": n}}
                (await client.post("/api/v1/tasks/run", json=body)).raise_for_status()

        await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))


def switchyard_round(url: str, runs: int, in_flight: int) -> Drain:
    key = f"bench:io:{uuid.uuid4().hex}"
    store = redis.Redis.from_url(DEFAULT_REDIS, decode_responses=True)
    with (
        scratch_database() as database,
        scratch_vhost() as broker,
        tempfile.TemporaryDirectory() as var,
    ):
        common = {
            "DATABASE_URL": database,
            "REDIS_URL": DEFAULT_REDIS,
            "CELERY_BROKER_URL": broker,
            "TASK_MODULES": "bench.io_tasks",
            "PYTHONPATH": str(ROOT),
            "BENCH_UPSTREAM_URL": url,
            "BENCH_TIMES_KEY": key,
            "VAR_DIR": var,
            # The product's defaults: fair share on (a tenant alone has every slot since
            # issue 33; a cap of 100 before it).
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        gateway_env = role_env(**common, API_HOST="127.0.0.1", API_PORT=str(port))
        with process([SWITCHYARD, "run", "api-gateway"], gateway_env) as gateway:
            wait_http(f"{base}/health/ready", gateway)
            token, _ = account(base)
            asyncio.run(submit(base, token, runs))
        worker_env = role_env(**common, WORKER_CONCURRENCY=str(in_flight), WORKER_QUEUES="default")
        with process([SWITCHYARD, "run", "worker"], worker_env) as worker:
            sampler = Sampler(worker.pid, database_port=5432)
            result = drained("Switchyard", store, key, runs, worker, sampler)
    store.delete(key)
    return result


def celery_round(url: str, runs: int, pool: str, concurrency: int) -> Drain:
    key = f"bench:io:{uuid.uuid4().hex}"
    store = redis.Redis.from_url(DEFAULT_REDIS, decode_responses=True)
    with scratch_vhost() as broker:
        env = role_env(
            BENCH_BROKER_URL=broker,
            BENCH_REDIS_URL=DEFAULT_REDIS,
            BENCH_UPSTREAM_URL=url,
            BENCH_TIMES_KEY=key,
        )
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from bench.io_celery import upstream_sync\n"
                f"for n in range({runs}): upstream_sync.delay(n)",
            ],
            env=env,
            check=True,
            cwd=ROOT,
        )
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.io_celery",
            "--quiet",
            "worker",
            "--loglevel=WARNING",
            "--queues=bench-io",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            "--without-gossip",
            "--without-mingle",
        ]
        with process(command, env) as worker:
            result = drained(
                f"Celery {pool} {concurrency}", store, key, runs, worker, Sampler(worker.pid)
            )
        assert queue_depth(broker, "bench-io") == 0
    store.delete(key)
    return result


def competitor_round(url: str, system: str, runs: int, in_flight: int) -> Drain:
    key = f"bench:io:{uuid.uuid4().hex}"
    store = redis.Redis.from_url(COMPETITOR_REDIS, decode_responses=True)
    store.flushdb()
    uv = [
        shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv"),
        "run",
        "--project",
        str(COMPETITORS),
        "--frozen",
        "--quiet",
    ]
    env = role_env(
        BENCH_REDIS_URL=COMPETITOR_REDIS,
        BENCH_UPSTREAM_URL=url,
        BENCH_TIMES_KEY=key,
        BENCH_IN_FLIGHT=str(in_flight),
        PYTHONPATH=str(ROOT),
        VIRTUAL_ENV="",
    )
    subprocess.run(
        [*uv, "python", "-m", "bench.competitors.enqueue", system, str(runs)],
        env=env,
        check=True,
        cwd=ROOT,
    )
    if system == "arq":
        command = [*uv, "arq", "bench.competitors.jobs.WorkerSettings"]
    else:
        command = [
            *uv,
            "taskiq",
            "worker",
            "bench.competitors.jobs:broker",
            "--workers=1",
            f"--max-async-tasks={in_flight}",
            "--no-configure-logging",
        ]
    with process(command, env) as worker:
        result = drained(system, store, key, runs, worker, Sampler(worker.pid))
    store.flushdb()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--prefork-runs", type=int, default=40)
    parser.add_argument("--skip", default="", help="comma-separated: arq,taskiq,prefork,threads")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    results: list[Drain] = []
    with upstream() as url:
        rounds: list[tuple[str, Callable[[], Drain]]] = [
            ("switchyard", lambda: switchyard_round(url, args.runs, args.in_flight)),
            ("threads", lambda: celery_round(url, args.runs, "threads", args.in_flight)),
            ("arq", lambda: competitor_round(url, "arq", args.runs, args.in_flight)),
            ("taskiq", lambda: competitor_round(url, "taskiq", args.runs, args.in_flight)),
            ("prefork", lambda: celery_round(url, args.prefork_runs, "prefork", 2)),
            ("prefork", lambda: celery_round(url, args.prefork_runs * 4, "prefork", 8)),
        ]
        for name, measure in rounds:
            if name not in skip:
                results.append(measure())
                drain = results[-1]
                print(
                    f"{drain.system}: {drain.runs} runs in {drain.seconds:.1f} s", file=sys.stderr
                )

    by = {drain.system: drain for drain in results}
    ours = by["Switchyard"]
    print_table(
        f"I/O-bound runs: {args.runs} runs of a {UPSTREAM_DELAY:g} s upstream call, one worker "
        f"process, {args.in_flight} in flight (prefork: {args.prefork_runs} and "
        f"{args.prefork_runs * 4} runs)",
        [
            "system",
            "runs",
            "drain s",
            "runs/s",
            "Switchyard vs it",
            "queue p50 s",
            "queue p99 s",
            "worker RSS MB",
            "PG connections",
        ],
        [
            [
                d.system,
                d.runs,
                f"{d.seconds:.1f}",
                f"{d.rate:.1f}",
                ratio(ours.rate, d.rate),
                f"{d.queue_p50:.2f}",
                f"{d.queue_p99:.2f}",
                f"{d.rss_mb:.0f}",
                d.connections if d.system == "Switchyard" else "-",
            ]
            for d in results
        ],
    )
    targets: list[list[object]] = [
        [f"{args.runs} runs drained <= 12 s", f"{ours.seconds:.1f} s", ours.seconds <= 12],
        [
            f"worker process RSS <= 250 MB with {args.in_flight} in flight",
            f"{ours.process_rss_mb:.0f} MB",
            ours.process_rss_mb <= 250,
        ],
        [
            f"PostgreSQL connections <= pool + overflow ({POOL_SIZE + MAX_OVERFLOW})",
            str(ours.connections),
            ours.connections <= POOL_SIZE + MAX_OVERFLOW,
        ],
    ]
    for system, floor in (
        ("arq", 1.0),
        ("taskiq", 1.0),
        (f"Celery threads {args.in_flight}", 1.0),
        ("Celery prefork 2", 50.0),
    ):
        if system in by:
            got = ours.rate / by[system].rate
            targets.append([f">= {floor:g}x {system}", f"{got:.2f}x", got >= floor])
    print_targets(targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
