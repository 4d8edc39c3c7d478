"""The Switchyard side of bench/io_bound.py, loaded through TASK_MODULES: one task that awaits
the upstream stand-in (BENCH_UPSTREAM_URL), as a handler awaits an LLM API, and records when
it started and ended in a Redis list (BENCH_TIMES_KEY), as every system of the benchmark does."""

from __future__ import annotations

import os
import time

import httpx
from pydantic import BaseModel

from switchyard.platform.registry import RetryPolicy, TaskContext, task

_client: httpx.AsyncClient | None = None


def client() -> httpx.AsyncClient:
    """One client per worker process (its one loop), its pool as wide as the runs in flight."""
    global _client  # noqa: PLW0603 - the process's client, as Services holds the others
    if _client is None:
        _client = httpx.AsyncClient(limits=httpx.Limits(max_connections=2000), timeout=60)
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
    answer = await client().post(os.environ["BENCH_UPSTREAM_URL"], json={"n": payload.n})
    answer.raise_for_status()
    assert ctx.services.redis is not None
    await ctx.services.redis.rpush(os.environ["BENCH_TIMES_KEY"], f"{started} {time.time()}")
    return {"n": payload.n}
