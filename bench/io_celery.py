"""Plain Celery for bench/io_bound.py: one task that calls the upstream stand-in synchronously
(urllib3, one pool per process shared by its threads), with the same reliability as
Switchyard's queues (acks late, prefetch 1 per slot, quorum queue, publisher confirms),
recording start and end in Redis."""

from __future__ import annotations

import os
import time

import redis
import urllib3

from bench.celery_baseline import baseline_app

QUEUE = "bench-io"

app = baseline_app("bench-io", QUEUE)

_http: urllib3.PoolManager | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[urllib3.PoolManager, redis.Redis]:
    global _http, _redis  # noqa: PLW0603 - per process (threads share them)
    if _http is None or _redis is None:
        _http = urllib3.PoolManager(maxsize=2000, timeout=60)
        _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"], max_connections=2000)
    return _http, _redis


@app.task(name="bench.upstream_sync")  # type: ignore[untyped-decorator]
def upstream_sync(n: int) -> None:
    http, store = _clients()
    started = time.time()
    answer = http.request("POST", os.environ["BENCH_UPSTREAM_URL"], json={"n": n})
    if answer.status != 200:
        raise RuntimeError(f"upstream answered {answer.status}")
    store.rpush(os.environ["BENCH_TIMES_KEY"], f"{started} {time.time()}")
