"""The baselines' Celery app: one no-op task on its own queue, publishing with the same
reliability as Switchyard (publisher confirms, persistent messages, acks late, prefetch 1).

Broker from BENCH_BROKER_URL. Used by Flower (`celery -A bench.celery_baseline flower`), by
the plain publish loop and by the plain worker of the throughput benchmark."""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bench-baseline"

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest@127.0.0.1//"))
app.conf.update(
    broker_transport_options={"confirm_publish": True},
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Does nothing: what is measured is everything around it."""
