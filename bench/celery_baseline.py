"""The baselines' Celery app: one no-op task on its own quorum queue, with the same reliability
as Switchyard (publisher confirms, persistent messages, acks late, prefetch 1, quorum queue).

Broker from BENCH_BROKER_URL. Used by Flower (`celery -A bench.celery_baseline flower`), by
the plain publish loop and by the plain worker of the throughput benchmark. With
BENCH_RECORD_DIR set, each worker process writes, when it exits, how many tasks it ran and
when its first started and its last ended (kept in memory meanwhile: no I/O per task)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown
from kombu import Queue

QUEUE = "bench-baseline"

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest@127.0.0.1//"))
app.conf.update(
    broker_transport_options={"confirm_publish": True},
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE, durable=True, queue_arguments={"x-queue-type": "quorum"})],
    worker_detect_quorum_queues=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=False,
    task_serializer="json",
    accept_content=["json"],
)

_ran = {"count": 0, "first_start": 0.0, "last_end": 0.0}


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Does nothing: what is measured is everything around it."""
    if not _ran["count"]:
        _ran["first_start"] = time.time()
    _ran["count"] += 1
    _ran["last_end"] = time.time()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _write_record(**_: Any) -> None:
    folder = os.environ.get("BENCH_RECORD_DIR")
    if folder and _ran["count"]:
        Path(folder, f"{os.getpid()}.json").write_text(json.dumps(_ran))
