"""Workers online: each worker process reports itself to Redis every few seconds (runs in
flight, its slots, its loop's lag, its queues); the gateway reads the reports of the last
REPORT_FRESH_SECONDS. Nothing is asked of the workers at read time, so the page is cheap and a
busy or dead worker cannot slow it."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from switchyard.services.cache import Cache

REPORT_KEY = "workers"
REPORT_SECONDS = 5.0
REPORT_FRESH_SECONDS = 3 * REPORT_SECONDS
REPORT_FORGET_SECONDS = 600.0


class WorkerReport(BaseModel):
    hostname: str
    pid: int
    concurrency: int
    in_flight: int
    loop_lag_seconds: float | None
    queues: list[str]
    seen_at: datetime


def me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def report(
    cache: Cache, concurrency: int, in_flight: int, lag: float, queues: list[str]
) -> None:
    entry = WorkerReport(
        hostname=socket.gethostname(),
        pid=os.getpid(),
        concurrency=concurrency,
        in_flight=in_flight,
        loop_lag_seconds=round(lag, 4),
        queues=queues,
        seen_at=datetime.now(UTC),
    )
    await cache.put_field(REPORT_KEY, me(), entry.model_dump_json())


async def forget(cache: Cache) -> None:
    """This process stops: it is offline at once, not after REPORT_FRESH_SECONDS."""
    await cache.drop_fields(REPORT_KEY, me())


async def online(cache: Cache) -> list[WorkerReport]:
    """The workers that reported lately, by host and pid; reports long stale are dropped."""
    now = time.time()
    fresh: list[WorkerReport] = []
    stale: list[str] = []
    for name, raw in (await cache.fields(REPORT_KEY)).items():
        try:
            entry = WorkerReport.model_validate(json.loads(raw))
        except (ValidationError, ValueError):
            stale.append(name)
            continue
        age = now - entry.seen_at.timestamp()
        if age <= REPORT_FRESH_SECONDS:
            fresh.append(entry)
        elif age > REPORT_FORGET_SECONDS:
            stale.append(name)
    if stale:
        await cache.drop_fields(REPORT_KEY, *stale)
    return sorted(fresh, key=lambda entry: (entry.hostname, entry.pid))
