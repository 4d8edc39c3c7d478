"""arq and taskiq for bench/io_bound.py (run in bench/competitors' own environment): the same
job as the others — await the upstream stand-in, record start and end in a Redis list — each
on its own Redis broker, at the in-flight count BENCH_IN_FLIGHT."""

from __future__ import annotations

import os
import time
from typing import Any

import aiohttp
from arq.connections import RedisSettings
from redis.asyncio import Redis
from taskiq_redis import ListQueueBroker

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
_state: dict[str, Any] = {}


async def _call(n: int) -> None:
    if "http" not in _state:
        _state["http"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        )
        _state["redis"] = Redis.from_url(REDIS_URL)
    started = time.time()
    async with _state["http"].post(os.environ["BENCH_UPSTREAM_URL"], json={"n": n}) as answer:
        answer.raise_for_status()
        await answer.read()
    await _state["redis"].rpush(os.environ["BENCH_TIMES_KEY"], f"{started} {time.time()}")


# arq: `arq bench.competitors.jobs.WorkerSettings`
async def arq_call(ctx: dict[str, Any], n: int) -> None:
    await _call(n)


class WorkerSettings:
    functions = [arq_call]  # noqa: RUF012 - arq reads class attributes
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = int(os.environ.get("BENCH_IN_FLIGHT", "200"))
    keep_result = 0
    poll_delay = 0.05


# taskiq: `taskiq worker bench.competitors.jobs:broker --max-async-tasks N --workers 1`
broker = ListQueueBroker(REDIS_URL, queue_name="bench-io-taskiq")


@broker.task(task_name="taskiq_call")  # type: ignore[untyped-decorator]
async def taskiq_call(n: int) -> None:
    await _call(n)
