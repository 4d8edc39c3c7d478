"""The worker: registered tasks bound to Celery, the dead-letter consumer, a heartbeat."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery, Task, bootsteps
from celery.exceptions import Ignore, Reject
from celery.signals import task_received, worker_shutting_down
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.messaging import Consumer
from kombu.transport.base import Message

from switchyard.logging import RunLogContext, remember_run, run_log_context, signal_safe_line
from switchyard.platform import runtime
from switchyard.platform.celery_app import broker_is_amqp
from switchyard.platform.dead_letters import DeadLetterRecord, archive, jsonable, parse
from switchyard.platform.execution import Outcome, died_in, execute
from switchyard.platform.heartbeat import write_heartbeat
from switchyard.platform.metrics import TASK_EVENTS
from switchyard.platform.publisher import REQUEST_ID_HEADER, TENANT_HEADER
from switchyard.platform.registry import TaskRegistry, TaskSpec
from switchyard.platform.topology import DEAD_LETTER_QUEUE
from switchyard.services.outages import unreachable_dependency
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5.0
HAND_BACK_SECONDS = 2
HAND_BACK_MAX_SECONDS = 30
# A delivery whose bookkeeping fails for a reason other than an outage (after the ledger's own
# retries of deadlocks) is handed back this many times, minutes apart, before it is given up
# to the dead letters: a bug must not loop for ever, and a transient failure never gets there.
HAND_BACK_LIMIT_FOR_ERRORS = 20
ARCHIVE_RETRY_MAX_SECONDS = 30.0
RECONNECT_MAX_SECONDS = 5


ARCHIVE_TIMEOUT_SECONDS = 30.0


def _archive_now(record: DeadLetterRecord) -> None:
    """Archive a dead letter from inside a delivery, on this process's loop and services."""
    current = runtime.current()
    current.call(archive(current.services, record), ARCHIVE_TIMEOUT_SECONDS)


def _foreign(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why a message was not published by Switchyard (its body is one run id), or None when
    it may have been: the ledger's claim then decides (an unknown run is skipped, a run of
    another tenant than the message's header is refused)."""
    if kwargs or len(args) != 1:
        return "its arguments are not one run id"
    try:
        uuid.UUID(str(args[0]))
    except ValueError:
        return "its argument is not a run id"
    return None


def _archive_foreign(task: Task, spec: TaskSpec[Any], why: str, body: dict[str, Any]) -> None:
    """Refused once, never run: archived with its raw body and the reason, then acked."""
    logger.error(
        "message refused: not sent by Switchyard (%s)",
        why,
        extra={"task": spec.name, "message_id": task.request.id},
    )
    record = DeadLetterRecord(
        run_id=None,
        task=spec.name,
        queue=spec.queue,
        reason="foreign_message",
        count=1,
        dead_lettered_at=datetime.now(UTC),
        headers={"message_id": str(task.request.id), "body": jsonable(body)},
        error=f"not sent by Switchyard: {why}",
    )
    _archive_now(record)
    TASK_EVENTS.labels(task=spec.name, event="refused").inc()
    raise Ignore()


def _task_body(spec: TaskSpec[Any], amqp: bool) -> Any:
    def run_registered_task(task: Task, *args: Any, **kwargs: Any) -> None:
        current = runtime.current()
        why = _foreign(args, kwargs)
        if why is not None:
            return _archive_foreign(task, spec, why, {"args": list(args), "kwargs": kwargs})
        run_id = str(args[0])
        delivery = task.request.delivery_info or {}
        tenant = getattr(task.request, TENANT_HEADER, None)
        request_id = getattr(task.request, REQUEST_ID_HEADER, None)
        log_context = RunLogContext(run_id, request_id, tenant)
        remember_run(log_context)  # for Celery's own outcome line, logged after we return
        with run_log_context(log_context):
            # A copy handed back (below) may find its run `started` by the attempt that could
            # not record its outcome: it takes it over.
            redelivered = bool(delivery.get("redelivered")) or task.request.retries > 0
            if amqp and isinstance(getattr(task.request, DELIVERY_COUNT_HEADER, None), int):
                redelivered = redelivered or getattr(task.request, DELIVERY_COUNT_HEADER) > 0
            try:
                outcome = _run_on_loop(
                    current, spec, uuid.UUID(run_id), log_context, redelivered, tenant, request_id
                )
            except Exception as error:
                # The handler's own errors are outcomes (execution): what arrives here is the
                # platform's bookkeeping failing (the ledger, the archive), never the run's.
                dependency = unreachable_dependency(error)
                if dependency is None and task.request.retries >= HAND_BACK_LIMIT_FOR_ERRORS:
                    raise
                return _hand_back(task, spec, dependency, error)
            return _settle(task, spec, run_id, outcome, amqp)

    return run_registered_task


DELIVERY_COUNT_HEADER = "x-delivery-count"


def _run_on_loop(
    current: runtime.WorkerLoop,
    spec: TaskSpec[Any],
    run_id: uuid.UUID,
    log_context: RunLogContext,
    redelivered: bool,
    tenant: str | None,
    request_id: str | None,
) -> Outcome:
    """This thread only waits: the run is a coroutine on the process's loop."""

    def attempt() -> Outcome:
        coroutine = execute(
            current.services,
            spec,
            run_id,
            redelivered=redelivered,
            tenant_id=uuid.UUID(tenant) if tenant else None,
            request_id=request_id,
        )
        return current.execute(spec, run_id, log_context, coroutine)

    started = current.call(died_in(current.services, run_id)) if redelivered else None
    if started is None:
        return attempt()
    if started >= current.services.settings.task_delivery_limit:
        _dead_letter_over_limit(spec, run_id, started)
        return Outcome("done")
    # Its last worker process died while it ran, with others in flight: run it alone among
    # such runs, so that a run that kills its process takes no other down with it again.
    logger.warning("run taken over from a worker that died: running it alone")
    with current.suspects:
        return attempt()


def _dead_letter_over_limit(spec: TaskSpec[Any], run_id: uuid.UUID, attempts: int) -> None:
    """The run was started TASK_DELIVERY_LIMIT times and each time its worker died in it:
    dead-lettered before a further attempt (the quorum queue's own `x-delivery-limit`, which
    counts every redelivery, stays as the broker's backstop)."""
    logger.error(
        "run dead-lettered: started %d times without an outcome",
        attempts,
        extra={"attempts": attempts},
    )
    record = DeadLetterRecord(
        run_id=run_id,
        task=spec.name,
        queue=spec.queue,
        reason="delivery_limit",
        count=attempts,
        dead_lettered_at=datetime.now(UTC),
        headers={"attempts": attempts},
    )
    _archive_now(record)


def _hand_back(task: Task, spec: TaskSpec[Any], dependency: str | None, error: Exception) -> None:
    """The run cannot be claimed or its outcome recorded: the ledger (or another service a run
    needs) is unreachable, or the platform's write failed. The message goes back to the broker
    as a copy due in HAND_BACK_SECONDS, doubling each time the run comes back, and this one is
    acked, so the run waits out the outage in the queue instead of being dropped, failed,
    spinning, or using up its deliveries. A copy that finds its run `started` by the attempt
    that could not record its outcome takes it over."""
    delay = hand_back_delay(task.request.retries)
    if dependency is None:
        logger.error(
            "run handed back: the platform's bookkeeping failed",
            exc_info=error,
            extra={"retry_in_seconds": delay},
        )
    else:
        logger.warning(
            "run handed back: %s unreachable",
            dependency,
            extra={"error": repr(error), "retry_in_seconds": delay},
        )
    TASK_EVENTS.labels(task=spec.name, event="handed_back").inc()
    raise task.retry(countdown=delay, queue=spec.queue, routing_key=spec.queue, max_retries=None)


def hand_back_delay(returned: int) -> int:
    """Seconds until a handed-back copy is due: doubling with each return, at most 30 s."""
    return int(min(HAND_BACK_SECONDS * 2 ** min(returned, 8), HAND_BACK_MAX_SECONDS))


def _settle(task: Task, spec: TaskSpec[Any], run_id: str, outcome: Outcome, amqp: bool) -> None:
    if outcome.kind in ("skipped", "cancelled", "parked"):
        raise Ignore()  # acked, and logged by Celery as ignored, not as a success
    if outcome.kind == "requeue":
        # Stopped by a shutdown before it finished: the broker hands it to another worker,
        # whose claim takes the `started` run over.
        raise Reject("worker stopping", requeue=True)
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
        _archive_now(record)


def bind_tasks(celery: Celery, registry: TaskRegistry) -> None:
    amqp = broker_is_amqp(str(celery.conf.broker_url))
    for spec in registry.all():
        celery.task(
            name=spec.name,
            bind=True,
            queue=spec.queue,
            max_retries=None,  # time limits are the loop's (platform.runtime), not Celery's
            acks_late=True,
            reject_on_worker_lost=True,
            typing=False,
        )(_task_body(spec, amqp))


class DeadLetterConsumer(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Archives every message the broker dead-letters, then acks it. A message that cannot be
    archived (the database is down) goes back to the queue after a delay that doubles with
    each failure in a row, never in a tight loop."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer: Any = None
        self.failures = 0

    def start(self, c: Any) -> None:
        self.timer = c.timer
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
        try:
            _archive_now(record)
        except Exception as error:
            self.failures += 1
            delay = min(0.5 * 2 ** min(self.failures, 10), ARCHIVE_RETRY_MAX_SECONDS)
            dependency = unreachable_dependency(error)
            if dependency is None:
                logger.exception("dead letter not archived; retried in %.1f s", delay)
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
            return
        self.failures = 0
        message.ack()


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
    celery: Celery, registry: TaskRegistry, heartbeat: Path, settings: Settings
) -> None:
    bind_tasks(celery, registry)
    celery.conf.worker_consumer = f"{__name__}:ReconnectingConsumer"
    worker_shutting_down.connect(
        hand_back_after(settings.worker_shutdown_grace_seconds), weak=False
    )
    celery.steps["worker"].add(heartbeat_step(heartbeat))
    if broker_is_amqp(str(celery.conf.broker_url)):
        celery.steps["consumer"].add(DeadLetterConsumer)


class ReconnectingConsumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, reconnecting to a broker that went away at most RECONNECT_MAX_SECONDS
    apart (kombu's default backs off to 30 s, so a worker could idle that long after the
    broker's return)."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=1,
            interval_step=1,
            interval_max=RECONNECT_MAX_SECONDS,
        )
        return super().ensure_connected(conn)


task_received.connect(_received, weak=False)
