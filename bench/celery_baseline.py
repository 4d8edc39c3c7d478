"""The baselines' Celery app: one no-op task on its own quorum queue, with the same reliability
as Switchyard (publisher confirms, persistent messages, acks late, prefetch 1, quorum queue).

Broker from BENCH_BROKER_URL. Used by Flower (`celery -A bench.celery_baseline flower`), by
the plain publish loop and by the plain worker of the throughput benchmark. With
BENCH_RECORD_DIR set, each worker process writes, when it exits, how many tasks it ran and
when its first started and its last ended (kept in memory meanwhile: no I/O per task).

`bench.ledger_noop` is the floor of the end-to-end benchmark: the same no-op with the least
the ledger contract needs around it, straight on the drivers (asyncpg, redis-py) on an event
loop per process as Switchyard's worker runs its services: claim the run (one guarded UPDATE),
publish `started`, record `succeeded` (one UPDATE), publish it. The run rows exist already in
the database at BENCH_LEDGER_DATABASE_URL; events go to BENCH_REDIS_URL."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown
from kombu import Queue

QUEUE = "bench-baseline"


def baseline_app(name: str, queue: str) -> Celery:
    """A plain Celery app with Switchyard's reliability on its own quorum queue `queue`."""
    celery = Celery(name, broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest@127.0.0.1//"))
    celery.conf.update(
        broker_transport_options={"confirm_publish": True},
        task_default_queue=queue,
        task_queues=[Queue(queue, durable=True, queue_arguments={"x-queue-type": "quorum"})],
        worker_detect_quorum_queues=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


app = baseline_app("bench", QUEUE)

_ran = {"count": 0, "first_start": 0.0, "last_end": 0.0}


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Does nothing: what is measured is everything around it."""
    if not _ran["count"]:
        _ran["first_start"] = time.time()
    _ran["count"] += 1
    _ran["last_end"] = time.time()


_CLAIM = (
    "UPDATE task_runs SET state = 'started', attempts = attempts + 1,"
    " started_at = coalesce(started_at, now())"
    " WHERE id = $1 AND state IN ('queued', 'scheduled', 'retrying') RETURNING tenant_id"
)
_SUCCEEDED = (
    "UPDATE task_runs SET state = 'succeeded', result = 'null', finished_at = now()"
    " WHERE id = $1 AND state = 'started' RETURNING tenant_id"
)
_drivers: dict[str, Any] = {}


async def _ledger_noop(run_id: uuid.UUID) -> None:
    if not _drivers:
        import asyncpg
        import redis.asyncio as redis

        database = os.environ["BENCH_LEDGER_DATABASE_URL"]
        _drivers["db"] = await asyncpg.connect(database.replace("postgresql+asyncpg", "postgresql"))
        _drivers["redis"] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    db, events = _drivers["db"], _drivers["redis"]
    tenant = await db.fetchval(_CLAIM, run_id)
    if tenant is None:
        return  # not claimable: another delivery had it
    await events.publish(f"bench:{tenant}:{run_id}", '{"state": "started"}')
    noop()
    await db.fetchval(_SUCCEEDED, run_id)
    await events.publish(f"bench:{tenant}:{run_id}", '{"state": "succeeded"}')


_loop: list[asyncio.AbstractEventLoop] = []


@app.task(name="bench.ledger_noop")  # type: ignore[untyped-decorator]
def ledger_noop(run_id: str) -> None:
    """The no-op inside the least a ledger-keeping worker does (see the module's doc)."""
    if not _loop:
        _loop.append(asyncio.new_event_loop())
    _loop[0].run_until_complete(_ledger_noop(uuid.UUID(run_id)))


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _write_record(**_: Any) -> None:
    folder = os.environ.get("BENCH_RECORD_DIR")
    if folder and _ran["count"]:
        Path(folder, f"{os.getpid()}.json").write_text(json.dumps(_ran))
