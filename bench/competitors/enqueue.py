"""Queue N jobs for arq or taskiq before their worker starts: `python -m
bench.competitors.enqueue arq|taskiq N` (in bench/competitors' environment)."""

from __future__ import annotations

import asyncio
import sys

from arq import create_pool
from arq.connections import RedisSettings

from bench.competitors.jobs import REDIS_URL, broker, taskiq_call

BATCH = 200


async def enqueue(system: str, jobs: int) -> None:
    if system == "arq":
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
        for start in range(0, jobs, BATCH):
            batch = range(start, min(start + BATCH, jobs))
            await asyncio.gather(*(pool.enqueue_job("arq_call", n) for n in batch))
        await pool.aclose()
        return
    await broker.startup()
    for start in range(0, jobs, BATCH):
        batch = range(start, min(start + BATCH, jobs))
        await asyncio.gather(*(taskiq_call.kiq(n) for n in batch))
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(enqueue(sys.argv[1], int(sys.argv[2])))
