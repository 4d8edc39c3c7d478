"""Workflows against Celery's canvas, on the same RabbitMQ and machine, each side with its
defaults (Switchyard: one worker process, fair share on; Celery: prefork at --concurrency,
a Redis result backend, which chords need):

1. fan-out and fan-in: one workflow mapping over --items items (square each, then total the
   list in item order) against a chord of as many squares and the same total; time from the
   start request to the total's result;
2. chains: --workflows workflows of five steps (each waits for the one before) against as
   many Celery chains of five tasks; time from the first start to the last end;
3. per-step cost: the chains' five steps against the same number of single runs submitted
   in bulk (no workflow), drained by the same worker: the time a step run costs over a run.

Targets (issue 37): a map of 10,000 items works; a step run costs <= 1.5x a single run; the
chord comparison and the five-step chains are reported against Celery in the same sitting.
Usage: uv run python -m bench.workflows [--items 10000] [--workflows 1000] [--rounds 1]
       [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench.celery_workflows import QUEUE
from bench.e2e_throughput import submit_bulk
from bench.gateway_overhead import account
from bench.harness import (
    DEFAULT_REDIS,
    ROOT,
    SWITCHYARD,
    Figures,
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

MODULE = "tests.fakes.workflow_tasks"
SUBMITTERS = 8
ECHO = {"task": "system.echo", "payload": {"message": "step"}}


def map_steps(items: int) -> list[dict[str, object]]:
    return [
        {"name": "spread", "task": "testing.spread", "payload": {"first": 0, "count": items}},
        {
            "name": "each",
            "task": "testing.square",
            "needs": ["spread"],
            "map": {"$step": "spread", "pointer": "/items"},
            "payload": {"n": {"$item": ""}},
        },
        {
            "name": "total",
            "task": "testing.total",
            "needs": ["each"],
            "payload": {"values": {"$step": "each"}},
        },
    ]


def chain_steps(length: int = 5) -> list[dict[str, object]]:
    return [
        {**ECHO, "name": f"s{index}", "needs": [f"s{index - 1}"] if index else []}
        for index in range(length)
    ]


@contextmanager
def switchyard(database: str, broker: str) -> Iterator[tuple[str, str]]:
    """A gateway and a worker with the product's defaults: (base URL, a tenant's token)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    common = {
        "DATABASE_URL": database,
        "REDIS_URL": DEFAULT_REDIS,
        "CELERY_BROKER_URL": broker,
        "TASK_MODULES": MODULE,
        "PYTHONPATH": str(ROOT),
    }
    gateway_env = role_env(**common, API_HOST="127.0.0.1", API_PORT=str(port))
    worker_env = role_env(**common, WORKER_QUEUES="default")
    with (
        process([SWITCHYARD, "run", "api-gateway"], gateway_env) as gateway,
        process([SWITCHYARD, "run", "worker"], worker_env),
    ):
        wait_http(f"{base}/health/ready", gateway)
        token, _ = account(base)
        yield base, token


async def _fetch(database: str, query: str, *args: object) -> asyncpg.Record:
    url = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(query, *args)
    finally:
        await connection.close()
    assert row is not None
    return row


def _wait(database: str, query: str, ids: list[uuid.UUID], timeout: float) -> float:
    """Poll `query` (columns `left`, `bad`, `took`) for `ids` until none is left: `took`."""
    deadline = time.monotonic() + timeout
    while True:
        row = asyncio.run(_fetch(database, query, ids))
        if row["bad"]:
            raise RuntimeError(f"{row['bad']} of {len(ids)} did not succeed")
        if not row["left"]:
            return float(row["took"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{row['left']} of {len(ids)} still not ended")
        time.sleep(0.5)


def wait_workflows(database: str, ids: list[uuid.UUID], timeout: float = 1200) -> float:
    """Seconds from the first run's creation to the last one's end, once all succeeded."""
    return _wait(
        database,
        "SELECT count(*) FILTER (WHERE state = 'running') AS left,"
        " count(*) FILTER (WHERE state NOT IN ('succeeded', 'running')) AS bad,"
        " extract(epoch FROM max(finished_at) - min(created_at)) AS took"
        " FROM workflow_runs WHERE id = ANY($1::uuid[])",
        ids,
        timeout,
    )


def wait_runs(database: str, ids: list[uuid.UUID], timeout: float = 1200) -> float:
    """Seconds from the first run's creation to the last one's end, once all succeeded."""
    return _wait(
        database,
        "SELECT count(*) FILTER (WHERE state <> 'succeeded') AS left, 0 AS bad,"
        " extract(epoch FROM max(finished_at) - min(created_at)) AS took"
        " FROM task_runs WHERE id = ANY($1::uuid[])",
        ids,
        timeout,
    )


async def start_workflows(
    base: str, token: str, steps: list[dict[str, object]], count: int
) -> list[uuid.UUID]:
    """Register the workflow and start `count` runs of it, 100 a request."""
    headers = {"Authorization": f"Bearer {token}"}
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        created = await client.post("/api/v1/workflows", json={"name": name, "steps": steps})
        created.raise_for_status()
        ids: list[uuid.UUID] = []
        for first in range(0, count, 100):
            runs = [{"input": None}] * min(100, count - first)
            answer = await client.post(f"/api/v1/workflows/{name}/runs/bulk", json={"runs": runs})
            answer.raise_for_status()
            ids += [uuid.UUID(item["id"]) for item in answer.json()["items"]]
    return ids


def switchyard_round(database: str, broker: str, items: int, workflows: int) -> dict[str, float]:
    with switchyard(database, broker) as (base, token):
        # A warm-up run: the worker's first runs pay for its imports and connections.
        wait_workflows(database, asyncio.run(start_workflows(base, token, chain_steps(2), 1)))
        fan = wait_workflows(
            database, asyncio.run(start_workflows(base, token, map_steps(items), 1))
        )
        chains = wait_workflows(
            database, asyncio.run(start_workflows(base, token, chain_steps(), workflows))
        )
        singles = wait_runs(database, asyncio.run(submit_bulk(base, token, workflows * 5, ECHO)))
    return {"map": fan, "chains": chains, "singles": singles}


def celery_round(broker: str, items: int, workflows: int, concurrency: int) -> dict[str, float]:
    """Both canvases on a plain prefork worker; each timed in the submitting process from the
    first apply to the last result."""
    env = role_env(BENCH_BROKER_URL=broker, BENCH_RESULT_BACKEND=DEFAULT_REDIS)
    command = [
        sys.executable, "-m", "celery", "-A", "bench.celery_workflows", "--quiet", "worker",
        "--loglevel=WARNING", f"--queues={QUEUE}", f"--concurrency={concurrency}",
        "--pool=prefork", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    script = f"""
import time
from celery import chain, chord
from bench.celery_workflows import square, step, total
step.delay().get(timeout=120)  # warm-up: the worker is up
began = time.monotonic()
result = chord(square.s(n) for n in range({items}))(total.s()).get(timeout=1200)
fan = time.monotonic() - began
assert result["count"] == {items} and result["ascending"], result
began = time.monotonic()
chains = [chain(*(step.s() for _ in range(5))).delay() for _ in range({workflows})]
for each in chains:
    each.get(timeout=1200)
print(fan, time.monotonic() - began)
"""
    with process(command, env):
        answer = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=2400,
        )
    fan, chains = (float(value) for value in answer.stdout.split())
    return {"map": fan, "chains": chains}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2, help="plain Celery's prefork")
    args = parser.parse_args(argv)

    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    with scratch_database() as database, scratch_vhost() as broker:
        for _ in range(args.rounds):
            theirs.append(celery_round(broker, args.items, args.workflows, args.concurrency))
            ours.append(switchyard_round(database, broker, args.items, args.workflows))

    def figures(rounds: list[dict[str, float]], key: str) -> Figures:
        return Figures(tuple(round_[key] for round_ in rounds))

    fan, their_fan = figures(ours, "map"), figures(theirs, "map")
    chains, their_chains = figures(ours, "chains"), figures(theirs, "chains")
    singles = figures(ours, "singles")
    steps = args.workflows * 5
    print_table(
        f"Workflows: a map of {args.items} items with its fan-in; {args.workflows} chains of "
        f"five steps; {args.rounds} round(s), seconds (median ±half-range), lower is better",
        ["what", "seconds", "vs Celery (time ratio)"],
        [
            [f"Celery chord of {args.items} + total (baseline)", their_fan, "1.00x"],
            [f"Switchyard map of {args.items} + total", fan, ratio(fan.median, their_fan.median)],
            [f"Celery {args.workflows} chains of 5 (baseline)", their_chains, "1.00x"],
            [
                f"Switchyard {args.workflows} workflows of 5 steps",
                chains,
                ratio(chains.median, their_chains.median),
            ],
            [f"Switchyard {steps} single runs in bulk (no workflow)", singles, ""],
        ],
    )
    per_step = chains.median / singles.median
    print_targets(
        [
            [f"a map of {args.items} items succeeds (or this raised)", "yes", True],
            [
                "a step run costs <= 1.5x a single run",
                f"{per_step:.2f}x ({chains.median / steps * 1000:.2f} vs "
                f"{singles.median / steps * 1000:.2f} ms a run)",
                per_step <= 1.5,
            ],
        ]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
