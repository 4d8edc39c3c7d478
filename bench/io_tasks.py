"""The Switchyard side of bench/io_bound.py, loaded through TASK_MODULES: one task that awaits
the upstream stand-in (BENCH_UPSTREAM_URL), as a handler awaits an LLM API, and records when
it started and ended in a Redis list (BENCH_TIMES_KEY), as every system of the benchmark does."""

from __future__ import annotations

import os
import time

import aiohttp
from pydantic import BaseModel

from switchyard.platform.registry import RetryPolicy, TaskContext, task

_client: aiohttp.ClientSession | None = None


def client() -> aiohttp.ClientSession:
    """One client per worker process (its one loop), its pool as wide as the runs in flight.
    aiohttp, as for every async system of the benchmark: httpx's pool checks each of its
    connections on every request, which at hundreds in flight costs more CPU than the run."""
    global _client  # noqa: PLW0603 - the process's client, as Services holds the others
    if _client is None:
        _client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        )
    return _client


class CallInput(BaseModel):
    n: int = 0


@task(
    "bench.upstream_call",
    input=CallInput,
    description="Await one call to the benchmark's upstream stand-in",
    retry=RetryPolicy(max_retries=0),
)
async def upstream_call(payload: CallInput, ctx: TaskContext) -> dict[str, int]:
    started = time.time()
    async with client().post(os.environ["BENCH_UPSTREAM_URL"], json={"n": payload.n}) as answer:
        answer.raise_for_status()
        await answer.read()
    assert ctx.services.redis is not None
    await ctx.services.redis.rpush(os.environ["BENCH_TIMES_KEY"], f"{started} {time.time()}")
    return {"n": payload.n}
