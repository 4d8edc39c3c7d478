"""Tasks for the worker tests, loaded through TASK_MODULES: some misbehave on purpose (one
awaits past its soft limit, one swallows every cancellation, one blocks the event loop); others
count completions or meet at a rendezvous."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from pydantic import BaseModel, Field

from switchyard.platform.registry import RetryPolicy, TaskContext, task

SOFT = 1.0
HARD = 2.5


class HoldInput(BaseModel):
    seconds: float = Field(default=30.0, ge=0, le=120)


@task(
    "testing.await_forever",
    input=HoldInput,
    description="Await far past the soft limit",
    retry=RetryPolicy(max_retries=0),
    soft_time_limit=SOFT,
    time_limit=HARD,
)
async def await_forever(payload: HoldInput, ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(payload.seconds)
    return {"slept": payload.seconds}


@task(
    "testing.ignore_cancel",
    input=HoldInput,
    description="Swallow every cancellation and keep awaiting",
    retry=RetryPolicy(max_retries=0),
    soft_time_limit=SOFT,
    time_limit=HARD,
)
async def ignore_cancel(payload: HoldInput, ctx: TaskContext) -> dict[str, Any]:
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
    return {"survived": True}


@task(
    "testing.block_loop",
    input=HoldInput,
    description="Block the event loop with synchronous work",
    retry=RetryPolicy(max_retries=0),
    soft_time_limit=SOFT,
    time_limit=HARD,
)
async def block_loop(payload: HoldInput, ctx: TaskContext) -> dict[str, Any]:
    time.sleep(payload.seconds)  # noqa: ASYNC251 - the bug this task exists to commit
    return {"blocked": payload.seconds}


class FinishInput(BaseModel):
    ledger: str = Field(max_length=100, description="The Redis hash the completions go to")
    seconds: float = Field(default=0.0, ge=0, le=30)


@task(
    "testing.finish_record",
    input=FinishInput,
    description="Await, then count this completed execution in a Redis hash",
    retry=RetryPolicy(max_retries=0),
)
async def finish_record(payload: FinishInput, ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(payload.seconds)
    assert ctx.services.redis is not None
    completions = await ctx.services.redis.hincrby(payload.ledger, str(ctx.run_id), 1)
    return {"completion": int(completions)}


class RendezvousInput(BaseModel):
    key: str = Field(max_length=100, description="The Redis counter the runs meet at")
    expected: int = Field(ge=1, le=10_000, description="How many runs must arrive")
    seconds: float = Field(default=60.0, gt=0, le=300, description="How long to wait for them")


@task(
    "testing.rendezvous",
    input=RendezvousInput,
    description="Arrive, then await until every expected run has arrived (or time out)",
    retry=RetryPolicy(max_retries=0),
    soft_time_limit=300,
    time_limit=320,
)
async def rendezvous(payload: RendezvousInput, ctx: TaskContext) -> dict[str, Any]:
    """Succeeds only if `expected` runs were awaiting at the same time: proof of overlap that
    no timing on a loaded machine can fake or break."""
    assert ctx.services.redis is not None
    arrived = int(await ctx.services.redis.incr(payload.key))
    async with asyncio.timeout(payload.seconds):
        # The others arrive in other coroutines and, in general, processes: no Event can say so.
        while int(await ctx.services.redis.get(payload.key) or 0) < payload.expected:  # noqa: ASYNC110
            await asyncio.sleep(0.25)
    return {"arrived": arrived}
