"""Tasks loaded through TASK_MODULES by the workflow volume tests: a list to map over, one
item's work, and a fan-in that says whether it received every item's output in order."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from switchyard.platform.registry import RetryPolicy, TaskContext, task


class SpreadInput(BaseModel):
    first: int = Field(ge=0)
    count: int = Field(ge=0, le=10_000)


class SquareInput(BaseModel):
    n: int
    sleep_ms: int = Field(default=0, ge=0, le=1000)


class TotalInput(BaseModel):
    values: list[dict[str, int]] = Field(max_length=10_000)


@task(
    "testing.spread",
    input=SpreadInput,
    description="The integers first .. first + count - 1",
    retry=RetryPolicy(max_retries=0),
)
async def spread(payload: SpreadInput, ctx: TaskContext) -> dict[str, Any]:
    return {"items": list(range(payload.first, payload.first + payload.count))}


@task(
    "testing.square",
    input=SquareInput,
    description="n and its square, after an optional nap",
    retry=RetryPolicy(max_retries=0),
)
async def square(payload: SquareInput, ctx: TaskContext) -> dict[str, int]:
    await asyncio.sleep(payload.sleep_ms / 1000)
    return {"n": payload.n, "square": payload.n * payload.n}


@task(
    "testing.total",
    input=TotalInput,
    description="How many values came, the sum of their squares, and whether n ascends",
    retry=RetryPolicy(max_retries=0),
)
async def total(payload: TotalInput, ctx: TaskContext) -> dict[str, Any]:
    numbers = [value["n"] for value in payload.values]
    return {
        "count": len(numbers),
        "sum": sum(value["square"] for value in payload.values),
        "ascending": numbers == sorted(numbers),
        "first": numbers[0] if numbers else None,
    }
