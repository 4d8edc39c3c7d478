"""system.echo, system.sleep and system.fail: exercise runs, retries and dead letters."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from switchyard.platform.registry import RetryPolicy, TaskContext, task


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str = Field(max_length=10_000, description="Returned as it is")


class SleepInput(BaseModel):
    seconds: float = Field(ge=0, le=300, description="How long to sleep (at most 300 s)")


class TransientFaultError(Exception):
    """A failure worth retrying."""


class FailInput(BaseModel):
    message: str = Field(default="system.fail was asked to fail", max_length=1000)
    fail_attempts: int | None = Field(
        default=None, ge=0, le=100, description="Fail the first N attempts, then succeed"
    )
    fault_key: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Fail while this fault flag exists in the cache",
    )
    retryable: bool = Field(default=True, description="Raise a retryable error")
    crash: bool = Field(
        default=False,
        description="Kill the worker process instead of raising (never in production)",
    )

    @field_validator("crash")
    @classmethod
    def _no_crash_in_production(cls, value: bool, info: ValidationInfo) -> bool:
        # Checked on submission and again by the worker before the handler runs.
        if value and (info.context or {}).get("environment", "production") == "production":
            raise ValueError("crash is refused in production")
        return value


@task(
    "system.echo",
    input=EchoInput,
    description="Return the payload unchanged",
    retry=RetryPolicy(max_retries=0),
)
async def echo(payload: EchoInput, ctx: TaskContext) -> dict[str, Any]:
    return payload.model_dump()


@task(
    "system.sleep",
    input=SleepInput,
    description="Sleep for a bounded number of seconds",
    retry=RetryPolicy(max_retries=0),
    soft_time_limit=310,
    time_limit=330,
)
async def sleep(payload: SleepInput, ctx: TaskContext) -> dict[str, float]:
    await asyncio.sleep(payload.seconds)
    return {"slept": payload.seconds}


@task(
    "system.fail",
    input=FailInput,
    description="Fail on purpose: exercises retries, dead letters and crash recovery",
    retry=RetryPolicy(
        max_retries=2, backoff_seconds=1, jitter=False, retry_on=(TransientFaultError,)
    ),
)
async def fail(payload: FailInput, ctx: TaskContext) -> dict[str, int]:
    if payload.crash:
        os.kill(os.getpid(), signal.SIGKILL)
    if payload.fault_key is not None:
        if not await ctx.services.cache.exists(f"faults:{payload.fault_key}"):
            return {"attempt": ctx.attempt}
    elif payload.fail_attempts is not None and ctx.attempt > payload.fail_attempts:
        return {"attempt": ctx.attempt}
    if payload.retryable:
        raise TransientFaultError(payload.message)
    raise ValueError(payload.message)
