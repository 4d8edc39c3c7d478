"""A task module loaded through TASK_MODULES by the fault-injection tests: its one task records
each execution outside the ledger (a Redis hash: run id -> executions), so that a test can
compare what the handlers did with what the ledger says."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from switchyard.platform.registry import RetryPolicy, TaskContext, task


class RecordInput(BaseModel):
    ledger: str = Field(max_length=100, description="The Redis hash the executions go to")
    sleep_ms: int = Field(default=0, ge=0, le=1000)


@task(
    "testing.record",
    input=RecordInput,
    description="Count this execution in a Redis hash, then sleep a moment",
    retry=RetryPolicy(max_retries=0),
)
async def record(payload: RecordInput, ctx: TaskContext) -> dict[str, Any]:
    assert ctx.services.redis is not None
    executions = await ctx.services.redis.hincrby(payload.ledger, str(ctx.run_id), 1)
    await asyncio.sleep(payload.sleep_ms / 1000)
    return {"execution": int(executions)}
