"""One delivered message of a registered task, from its arrival to what becomes of it.

`deliver` does the work, as a coroutine on the worker process's loop: refuse a foreign
message, take over a run whose last worker died in it (or dead-letter it past its delivery
limit), run the attempt (platform.execution), archive a dead letter the broker does not
keep. It answers a `Settlement`: what Celery must do with the message. The task body that
Celery's tracer calls (`task_body`) only carries out that settlement — ack, ignore, retry,
requeue, reject — with Celery's own exceptions, in the consumer's thread (platform.pool).

A failure of the platform's own bookkeeping (the ledger, the archive) is never the run's: the
delivery is handed back, a delayed copy to the broker, and comes again."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from kombu.serialization import loads

from switchyard.logging import RunLogContext, remember_run, run_log_context
from switchyard.platform import runtime
from switchyard.platform.celery_app import Transport, transport_of
from switchyard.platform.dead_letters import DeadLetterRecord, archive, jsonable
from switchyard.platform.execution import Outcome, died_in, execute
from switchyard.platform.metrics import TASK_EVENTS
from switchyard.platform.pool import SETTLED, LoopPool
from switchyard.platform.publisher import REQUEST_ID_HEADER, TENANT_HEADER, TRACE_PARENT_HEADER
from switchyard.platform.registry import TaskRegistry, TaskSpec
from switchyard.services.outages import unreachable_dependency

logger = logging.getLogger("switchyard.platform.worker")

DELIVERY_COUNT_HEADER = "x-delivery-count"
# A handed-back copy is due in this many seconds, doubling each time it comes back, at most
# HAND_BACK_MAX_DELAY_SECONDS.
HAND_BACK_DELAY_SECONDS = 2
HAND_BACK_MAX_DELAY_SECONDS = 30
# A delivery whose bookkeeping fails for a reason other than an outage (after the ledger's own
# retries of deadlocks) is handed back this many times, minutes apart, before it is given up
# to the dead letters: a bug must not loop for ever, and a transient failure never gets there.
HAND_BACK_LIMIT_FOR_ERRORS = 20
_ACCEPT = {"application/json"}


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message of a registered task as it arrived: its arguments and its headers."""

    message_id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    tenant: str | None
    request_id: str | None
    redelivered: bool
    returned: int  # how often it came back already: retried or handed back
    trace_parent: str | None = None  # the submitting request's (TRACING; W3C traceparent)

    @classmethod
    def of(
        cls, request: Mapping[str, Any], args: Any, kwargs: Any, transport: Transport
    ) -> Delivery:
        """From Celery's request (its dict, or a task's `request` attributes)."""
        delivery_info = request.get("delivery_info") or {}
        returned = int(request.get("retries") or 0)
        # A copy handed back may find its run `started` by the attempt that could not record
        # its outcome: it takes it over.
        redelivered = bool(delivery_info.get("redelivered")) or returned > 0
        count = request.get(DELIVERY_COUNT_HEADER)
        if transport.counts_deliveries and isinstance(count, int):
            redelivered = redelivered or count > 0
        return cls(
            message_id=str(request.get("id")),
            args=tuple(args) if isinstance(args, list | tuple) else (args,),
            kwargs=dict(kwargs or {}),
            tenant=request.get(TENANT_HEADER),
            request_id=request.get(REQUEST_ID_HEADER),
            trace_parent=request.get(TRACE_PARENT_HEADER),
            redelivered=redelivered,
            returned=returned,
        )

    @property
    def log_context(self) -> RunLogContext:
        run_id = str(self.args[0]) if self.args else self.message_id
        return RunLogContext(run_id, self.request_id, self.tenant)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What becomes of a delivered message."""

    kind: Literal["ack", "ignore", "requeue", "retry", "reject", "hand_back", "fail"]
    delay: int = 0
    error: BaseException | None = None
    dependency: str | None = None  # hand_back: the service that was unreachable, if one was


_FROM_OUTCOME: dict[str, Settlement] = {
    "done": Settlement("ack"),
    "skipped": Settlement("ignore"),
    "cancelled": Settlement("ignore"),
    "parked": Settlement("ignore"),
    "requeue": Settlement("requeue"),
}


def foreign(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
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


async def deliver(
    current: runtime.WorkerLoop, spec: TaskSpec[Any], delivery: Delivery, transport: Transport
) -> Settlement:
    """Do the work of one delivery on the loop; what Celery must do with its message."""
    with run_log_context(delivery.log_context):
        why = foreign(delivery.args, delivery.kwargs)
        if why is not None:
            await _archive_foreign(current, spec, why, delivery)
            return Settlement("ignore")
        run_id = uuid.UUID(str(delivery.args[0]))
        try:
            outcome = await _attempt(current, spec, run_id, delivery)
            if outcome.kind == "dead_letter" and not transport.dead_letter_exchange:
                # No dead-letter exchange (Redis, standalone): archived here, then acked.
                await archive(current.services, _record(spec, run_id, "rejected", 1, {}))
                return Settlement("ack")
        except Exception as error:
            # The handler's own errors are outcomes (execution): what arrives here is the
            # platform's bookkeeping failing (the ledger, the archive), never the run's.
            dependency = unreachable_dependency(error)
            if dependency is None and delivery.returned >= HAND_BACK_LIMIT_FOR_ERRORS:
                return Settlement("fail", error=error)
            delay = hand_back_delay(delivery.returned)
            return Settlement("hand_back", delay=delay, error=error, dependency=dependency)
        if outcome.kind == "retry":
            return Settlement("retry", delay=outcome.delay, error=outcome.error)
        if outcome.kind == "dead_letter":
            return Settlement("reject", error=outcome.error)
        return _FROM_OUTCOME[outcome.kind]


async def _attempt(
    current: runtime.WorkerLoop, spec: TaskSpec[Any], run_id: uuid.UUID, delivery: Delivery
) -> Outcome:
    services = current.services

    def attempt() -> Coroutine[Any, Any, Outcome]:
        return execute(
            services,
            spec,
            run_id,
            redelivered=delivery.redelivered,
            tenant_id=uuid.UUID(delivery.tenant) if delivery.tenant else None,
            request_id=delivery.request_id,
            trace_parent=delivery.trace_parent,
        )

    started = await died_in(services, run_id) if delivery.redelivered else None
    if started is None:
        return await current.run(spec, run_id, delivery.log_context, attempt())
    if started >= services.settings.task_delivery_limit:
        # Started TASK_DELIVERY_LIMIT times and each time its worker died in it: dead-lettered
        # before a further attempt (the quorum queue's own `x-delivery-limit`, which counts
        # every redelivery, stays as the broker's backstop).
        logger.error(
            "run dead-lettered: started %d times without an outcome",
            started,
            extra={"attempts": started},
        )
        record = _record(spec, run_id, "delivery_limit", started, {"attempts": started})
        await archive(services, record)
        return Outcome("done")
    # Its last worker process died while it ran, with others in flight: run it alone among
    # such runs, so that a run that kills its process takes no other down with it again.
    logger.warning("run taken over from a worker that died: running it alone")
    async with current.suspects:
        return await current.run(spec, run_id, delivery.log_context, attempt())


def _record(
    spec: TaskSpec[Any], run_id: uuid.UUID, reason: str, count: int, headers: dict[str, Any]
) -> DeadLetterRecord:
    return DeadLetterRecord(
        run_id=run_id,
        task=spec.name,
        queue=spec.queue,
        reason=reason,
        count=count,
        dead_lettered_at=datetime.now(UTC),
        headers=headers,
    )


async def _archive_foreign(
    current: runtime.WorkerLoop, spec: TaskSpec[Any], why: str, delivery: Delivery
) -> None:
    """Refused once, never run: archived with its raw body and the reason, then acked."""
    logger.error(
        "message refused: not sent by Switchyard (%s)",
        why,
        extra={"task": spec.name, "message_id": delivery.message_id},
    )
    body = {"args": list(delivery.args), "kwargs": delivery.kwargs}
    record = DeadLetterRecord(
        run_id=None,
        task=spec.name,
        queue=spec.queue,
        reason="foreign_message",
        count=1,
        dead_lettered_at=datetime.now(UTC),
        headers={"message_id": delivery.message_id, "body": jsonable(body)},
        error=f"not sent by Switchyard: {why}",
    )
    await archive(current.services, record)
    TASK_EVENTS.labels(task=spec.name, event="refused").inc()


def hand_back_delay(returned: int) -> int:
    """Seconds until a handed-back copy is due: doubling with each return, at most 30 s."""
    return int(min(HAND_BACK_DELAY_SECONDS * 2 ** min(returned, 8), HAND_BACK_MAX_DELAY_SECONDS))


def settle(task: Task, spec: TaskSpec[Any], settlement: Settlement) -> None:
    """Carry out a settlement with Celery's own means (in the tracer, in Celery's thread)."""
    kind = settlement.kind
    if kind == "ack":
        return
    if kind == "ignore":
        raise Ignore()  # acked, and logged by Celery as ignored, not as a success
    if kind == "requeue":
        # Stopped by a shutdown before it finished: the broker hands it to another worker,
        # whose claim takes the `started` run over.
        raise Reject("worker stopping", requeue=True)
    if kind == "reject":
        # The broker dead-letters the rejected message; the worker's consumer archives it.
        raise Reject(repr(settlement.error), requeue=False)
    if kind == "fail":
        assert settlement.error is not None
        raise settlement.error
    if kind == "hand_back":
        _log_hand_back(spec, settlement)
    raise task.retry(
        countdown=settlement.delay, queue=spec.queue, routing_key=spec.queue, max_retries=None
    )


def _log_hand_back(spec: TaskSpec[Any], settlement: Settlement) -> None:
    """The run could not be claimed or its outcome recorded: its message goes back as a copy
    due in `delay` seconds and this one is acked, so the run waits out the outage in the
    queue instead of being dropped, failed, spinning, or using up its deliveries."""
    if settlement.dependency is None:
        logger.error(
            "run handed back: the platform's bookkeeping failed",
            exc_info=settlement.error,
            extra={"retry_in_seconds": settlement.delay},
        )
    else:
        logger.warning(
            "run handed back: %s unreachable",
            settlement.dependency,
            extra={"error": repr(settlement.error), "retry_in_seconds": settlement.delay},
        )
    TASK_EVENTS.labels(task=spec.name, event="handed_back").inc()


def task_body(spec: TaskSpec[Any], transport: Transport) -> Any:
    """The function Celery's tracer calls for a registered task."""

    def run_registered_task(task: Task, *args: Any, **kwargs: Any) -> None:
        delivery = Delivery.of(vars(task.request), args, kwargs, transport)
        remember_run(delivery.log_context)  # for Celery's own outcome line, logged after us
        settled = SETTLED.get()
        if settled is None:  # a pool that is not ours (solo, threads): the work, here
            current = runtime.current()
            settled = current.call(deliver(current, spec, delivery, transport))
        if isinstance(settled, BaseException):
            raise settled
        with run_log_context(delivery.log_context):
            settle(task, spec, settled)

    return run_registered_task


class Deliveries:
    """The registered tasks of a worker process, and the coroutine of each delivery."""

    def __init__(self, celery: Celery, registry: TaskRegistry) -> None:
        self.transport = transport_of(celery)
        self.current: runtime.WorkerLoop | None = None
        self.specs: dict[str, TaskSpec[Any]] = {}
        for spec in registry.all():
            self.specs[spec.name] = spec
            celery.task(
                name=spec.name,
                bind=True,
                queue=spec.queue,
                max_retries=None,  # time limits are the loop's (platform.runtime), not Celery's
                acks_late=True,
                reject_on_worker_lost=True,
                typing=False,
            )(task_body(spec, self.transport))

    def start(
        self,
        name: str,
        request: dict[str, Any],
        body: Any,
        content_type: str,
        content_encoding: str,
    ) -> Coroutine[Any, Any, Settlement] | None:
        """The coroutine of a delivery of task `name` (LoopPool's starter); None for a task
        that is not a registered run."""
        spec = self.specs.get(name)
        if spec is None:
            return None
        args, kwargs, _ = loads(body, content_type, content_encoding, accept=_ACCEPT)
        assert self.current is not None  # LoopPool starts deliveries only once attached
        delivery = Delivery.of(request, args, kwargs, self.transport)
        return deliver(self.current, spec, delivery, self.transport)

    def attach(self, current: runtime.WorkerLoop) -> None:
        """Make LoopPool run deliveries on `current`'s loop."""
        self.current = current
        LoopPool.attach(current.loop, self.start)
