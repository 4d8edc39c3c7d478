"""The worker process's Celery: its pool (platform.pool), the registered tasks bound to it
(platform.delivery), the dead-letter consumer, a heartbeat and shutdown (reconnection:
platform.celery_app.ReconnectingConnection)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_received, worker_shutting_down
from kombu.messaging import Consumer
from kombu.transport.base import Message

from switchyard.logging import RunLogContext, run_log_context, signal_safe_line
from switchyard.platform import runtime
from switchyard.platform.celery_app import transport_of
from switchyard.platform.dead_letters import archive, parse
from switchyard.platform.delivery import Deliveries
from switchyard.platform.heartbeat import write_heartbeat
from switchyard.platform.metrics import TASK_EVENTS
from switchyard.platform.publisher import REQUEST_ID_HEADER, TENANT_HEADER
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.topology import DEAD_LETTER_QUEUE
from switchyard.platform.workflows import engine as workflows
from switchyard.services.outages import unreachable_dependency
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5.0
POOL = "switchyard.platform.pool:LoopPool"
ARCHIVE_RETRY_MAX_SECONDS = 30.0


ARCHIVE_TIMEOUT_SECONDS = 30.0


class DeadLetterConsumer(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Archives every message the broker dead-letters, then acks it. A message that cannot be
    archived (the database is down) goes back to the queue after a delay that doubles with
    each failure in a row, never in a tight loop.

    The archive is written on the process's loop; the consumer's thread only starts it and,
    once it is done, acks or requeues the message (Celery's hub calls back in its thread), so
    a slow database never holds up the deliveries of runs."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer: Any = None
        self.hub: Any = None
        self.failures = 0

    def start(self, c: Any) -> None:
        self.timer = c.timer
        self.hub = c.hub
        super().start(c)

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
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(archive(current.services, record), ARCHIVE_TIMEOUT_SECONDS),
            current.loop,
        )
        if self.hub is None:  # no event loop of Celery's to come back on: wait here
            concurrent.futures.wait([future])
            self.archived(future, message)
            return
        hub = self.hub
        future.add_done_callback(lambda done: hub.call_soon(self.archived, done, message))

    def archived(self, future: concurrent.futures.Future[None], message: Message) -> None:
        """In the consumer's thread: ack the archived message, or requeue it later."""
        error = future.exception()
        if error is None:
            self.failures = 0
            message.ack()
            return
        self.failures += 1
        delay = min(0.5 * 2 ** min(self.failures, 10), ARCHIVE_RETRY_MAX_SECONDS)
        dependency = unreachable_dependency(error)
        if dependency is None:
            logger.error("dead letter not archived; retried in %.1f s", delay, exc_info=error)
        else:
            logger.warning(
                "dead letter not archived: %s unreachable; retried in %.1f s",
                dependency,
                delay,
                extra={"error": repr(error)},
            )
        if self.timer is not None:
            self.timer.call_after(delay, message.requeue)
        else:
            message.requeue()


def heartbeat_step(path: Path) -> type[bootsteps.StartStopStep]:
    class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
        """Writes the node name and time to a file that `switchyard healthcheck` reads."""

        requires = ("celery.worker.components:Timer",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self.timer_ref: Any = None

        def start(self, worker: Any) -> None:
            def beat() -> None:
                loop = runtime.current()
                write_heartbeat(
                    path,
                    {
                        "hostname": worker.hostname,
                        "pid": os.getpid(),
                        "in_flight": len(loop.flights),
                        "stalled_seconds": round(loop.stalled_for(), 3),
                    },
                )

            beat()
            self.timer_ref = worker.timer.call_repeatedly(HEARTBEAT_INTERVAL_SECONDS, beat)

        def stop(self, worker: Any) -> None:
            if self.timer_ref is not None:
                self.timer_ref.cancel()
            path.unlink(missing_ok=True)

    return Heartbeat


def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Count and log each delivery as it arrives, with the run's request id and tenant."""
    if request is None:
        return
    headers = getattr(request, "request_dict", None) or {}
    context = RunLogContext(
        str(request.id), headers.get(REQUEST_ID_HEADER), headers.get(TENANT_HEADER)
    )
    TASK_EVENTS.labels(task=request.task_name, event="received").inc()
    with run_log_context(context):
        logger.info("task received", extra={"task": request.task_name})


def hand_back_after(grace_seconds: float) -> Any:
    """On a warm shutdown (SIGTERM), let runs in flight finish for `grace_seconds`; then cancel
    the rest: each is rejected back to the broker (acks are late), which hands it to another
    worker, and the ledger lets that redelivery take the `started` run over."""

    def on_shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
        if how != "Warm":
            return
        # In a signal handler: no logging here (its lock may be held by the interrupted code).

        def hand_back() -> None:
            stopped = runtime.current().stop_all("shutdown")
            if stopped:
                logger.warning("shutdown grace period over: handing %d runs back", stopped)

        timer = threading.Timer(grace_seconds, hand_back)
        timer.daemon = True
        timer.start()

    return on_shutting_down


def json_shutdown_lines(service_type: str) -> None:
    """Celery prints its shutdown messages ("worker: Warm shutdown (MainProcess)") raw, from the
    signal handler, with os.write: they become JSON lines on stderr like every other line."""
    from celery.apps import worker as celery_worker

    def say(message: str, f: Any = None) -> None:
        line = signal_safe_line("celery.apps.worker", message.strip(), service_type)
        with contextlib.suppress(OSError):
            os.write(2, line)

    celery_worker.safe_say = say


def configure_worker(
    celery: Celery,
    registry: TaskRegistry,
    heartbeat: Path,
    settings: Settings,
    loop: runtime.WorkerLoop | None = None,
) -> None:
    """Bind the registered tasks and the worker's steps; with the process's `loop`, deliveries
    run on it through Switchyard's pool (the `worker_pool` setting)."""
    deliveries = Deliveries(celery, registry)
    if loop is not None:
        deliveries.attach(loop)
        loop.services.workflow_steps = workflows.Steps(loop.services, registry)
    celery.conf.worker_pool = POOL
    worker_shutting_down.connect(
        hand_back_after(settings.worker_shutdown_grace_seconds), weak=False
    )
    celery.steps["worker"].add(heartbeat_step(heartbeat))
    if transport_of(celery).dead_letter_exchange:
        celery.steps["consumer"].add(DeadLetterConsumer)


task_received.connect(_received, weak=False)
