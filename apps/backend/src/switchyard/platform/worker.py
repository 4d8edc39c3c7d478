"""The worker: registered tasks bound to Celery, the dead-letter consumer, a heartbeat."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery, Task, bootsteps
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown, worker_shutdown
from kombu.messaging import Consumer
from kombu.transport.base import Message

from switchyard.platform import runtime
from switchyard.platform.celery_app import broker_is_amqp
from switchyard.platform.dead_letters import DeadLetterRecord, archive, parse
from switchyard.platform.execution import execute
from switchyard.platform.heartbeat import write_heartbeat
from switchyard.platform.publisher import TENANT_HEADER
from switchyard.platform.registry import TaskRegistry, TaskSpec
from switchyard.platform.topology import DEAD_LETTER_QUEUE

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5.0


def _task_body(spec: TaskSpec[Any], amqp: bool) -> Any:
    def run_registered_task(task: Task, run_id: str) -> None:
        current = runtime.current()
        delivery = task.request.delivery_info or {}
        tenant = getattr(task.request, TENANT_HEADER, None)
        outcome = current.run(
            execute(
                current.services,
                spec,
                uuid.UUID(run_id),
                redelivered=bool(delivery.get("redelivered")),
                tenant_id=uuid.UUID(tenant) if tenant else None,
            )
        )
        if outcome.kind == "retry":
            raise task.retry(
                countdown=outcome.delay, queue=spec.queue, routing_key=spec.queue, max_retries=None
            )
        if outcome.kind == "dead_letter":
            if amqp:
                # The broker dead-letters the rejected message; the consumer below archives it.
                raise Reject(repr(outcome.error), requeue=False)
            record = DeadLetterRecord(
                run_id=uuid.UUID(run_id),
                task=spec.name,
                queue=spec.queue,
                reason="rejected",
                count=1,
                dead_lettered_at=datetime.now(UTC),
                headers={},
            )
            current.run(archive(current.services, record))

    return run_registered_task


def bind_tasks(celery: Celery, registry: TaskRegistry) -> None:
    amqp = broker_is_amqp(str(celery.conf.broker_url))
    for spec in registry.all():
        celery.task(
            name=spec.name,
            bind=True,
            queue=spec.queue,
            time_limit=spec.time_limit,
            max_retries=None,
            acks_late=True,
            reject_on_worker_lost=True,
            typing=False,
        )(_task_body(spec, amqp))


class DeadLetterConsumer(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Archives every message the broker dead-letters, then acks it."""

    def get_consumers(self, channel: Any) -> list[Consumer]:
        return [
            Consumer(
                channel,
                queues=[DEAD_LETTER_QUEUE],
                callbacks=[self.on_message],
                accept=["json"],
                prefetch_count=10,
            )
        ]

    def on_message(self, body: Any, message: Message) -> None:
        record = parse(dict(message.headers or {}), body)
        current = runtime.current()
        try:
            current.run(archive(current.services, record))
        except Exception:
            logger.exception("dead letter not archived; it stays queued")
            message.requeue()
            return
        message.ack()


def heartbeat_step(path: Path) -> type[bootsteps.StartStopStep]:
    class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
        """Writes the node name and time to a file that `switchyard healthcheck` reads."""

        requires = ("celery.worker.components:Timer",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self.timer_ref: Any = None

        def start(self, worker: Any) -> None:
            def beat() -> None:
                write_heartbeat(path, {"hostname": worker.hostname, "pid": os.getpid()})

            beat()
            self.timer_ref = worker.timer.call_repeatedly(HEARTBEAT_INTERVAL_SECONDS, beat)

        def stop(self, worker: Any) -> None:
            if self.timer_ref is not None:
                self.timer_ref.cancel()
            path.unlink(missing_ok=True)

    return Heartbeat


def configure_worker(celery: Celery, registry: TaskRegistry, heartbeat: Path) -> None:
    bind_tasks(celery, registry)
    celery.steps["worker"].add(heartbeat_step(heartbeat))
    if broker_is_amqp(str(celery.conf.broker_url)):
        celery.steps["consumer"].add(DeadLetterConsumer)


def _close_runtime(**_: Any) -> None:
    runtime.close_current()


worker_process_shutdown.connect(_close_runtime, weak=False)
worker_shutdown.connect(_close_runtime, weak=False)
