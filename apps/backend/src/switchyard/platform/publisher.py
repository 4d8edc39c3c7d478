"""Publishing runs to the broker, with confirms and a bound on the time it may take."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.transport.native_delayed_delivery import calculate_routing_key

from switchyard.platform import topology
from switchyard.platform.celery_app import transport_of
from switchyard.platform.topology import TASK_EXCHANGE

logger = logging.getLogger(__name__)

MIN_DELAY_SECONDS = 1.0
# The exchange of Celery's native delayed delivery (kombu.transport.native_delayed_delivery):
# a message held `countdown` seconds goes there under a routing key that encodes the delay.
DELAYED_EXCHANGE = "celery_delayed_27"
PERSISTENT = 2
# Every run message names its tenant; the worker refuses a run whose ledger row disagrees.
TENANT_HEADER = "switchyard_tenant"
# The request id of the HTTP call that submitted the run: the worker logs the run under it.
REQUEST_ID_HEADER = "switchyard_request_id"
# W3C Trace Context's own name: the worker's span of the attempt joins the request's trace.
TRACE_PARENT_HEADER = "traceparent"


class BrokerUnavailableError(Exception):
    """The broker did not take the message in time."""


@dataclass(frozen=True, slots=True)
class RunMessage:
    """What the message of one run says."""

    run_id: str
    task: str
    queue: str
    eta: datetime | None
    tenant_id: str | None
    request_id: str | None = None
    trace_parent: str | None = None  # W3C traceparent of the submitting request (TRACING)

    @classmethod
    def of(cls, run: PublishedRun, eta: datetime | None = None) -> RunMessage:
        """The message of a stored run (a new one, or one admitted from the waiting)."""
        return cls(
            str(run.id),
            run.task,
            run.queue,
            eta,
            str(run.tenant_id),
            run.request_id,
            run.trace_parent,
        )


class RunBroker(Protocol):
    """What the platform needs to send runs: publish messages in one burst and say, for each,
    whether the broker confirmed it (never raising). `RunPublisher` on RabbitMQ or Redis;
    `tests.fakes.broker.InMemoryBroker` in tests (the whole broker: publish, take, settle,
    delays, depth, with RabbitMQ's semantics)."""

    async def publish_many(self, messages: Sequence[RunMessage]) -> list[bool]: ...


class PublishedRun(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def task(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def trace_parent(self) -> str | None: ...


@dataclass
class _Burst:
    """A channel of its own, in confirm mode, on which messages are sent without waiting for
    each one's confirm: the broker's acks (one may cover many) are counted as they come."""

    connection: Any
    channel: Any
    producer: Any
    sent: int = 0  # delivery tags so far: the broker numbers a confirm channel's messages 1, 2...
    acked_upto: int = 0  # every tag up to this one is acked ("multiple" acks)
    acked: set[int] = field(default_factory=set)
    nacked: set[int] = field(default_factory=set)

    def on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.acked_upto = max(self.acked_upto, tag)
        else:
            self.acked.add(tag)

    def on_nack(self, tag: int, multiple: bool) -> None:
        if multiple:  # every tag up to this one not acked yet
            self.nacked.update(
                other for other in range(self.acked_upto + 1, tag + 1) if other not in self.acked
            )
        else:
            self.nacked.add(tag)

    def settled(self, tag: int) -> bool:
        return tag <= self.acked_upto or tag in self.acked or tag in self.nacked

    def confirmed(self, tag: int) -> bool:
        return tag not in self.nacked and (tag <= self.acked_upto or tag in self.acked)

    def forget(self, upto: int) -> None:
        """Drop what is known of tags up to `upto` (settled: nobody asks about them again)."""
        self.acked = {tag for tag in self.acked if tag > upto}
        self.nacked = {tag for tag in self.nacked if tag > upto}


class RunPublisher:
    def __init__(self, celery: Celery, delivery_limit: int, timeout: float) -> None:
        self.celery = celery
        self.delivery_limit = delivery_limit
        self.timeout = timeout
        self._declared = False
        # What the broker said when it refused this deployment's queues (health reports it).
        self.mismatch: topology.TopologyMismatchError | None = None
        self._lock = threading.Lock()
        self._burst_lock = threading.Lock()
        self._burst: _Burst | None = None

    def declare_topology(self) -> None:
        with self._lock:
            if self._declared or not transport_of(self.celery).declared_topology:
                self._declared = True
                return
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=self.timeout)
                try:
                    topology.declare(connection, self.delivery_limit)
                except topology.TopologyMismatchError as mismatch:
                    self.mismatch = mismatch
                    raise
            self._declared, self.mismatch = True, None

    @property
    def confirms(self) -> bool:
        return transport_of(self.celery).confirms

    def _send(self, message: RunMessage, **options: Any) -> None:
        eta = message.eta
        if eta is not None and (eta - datetime.now(UTC)).total_seconds() < MIN_DELAY_SECONDS:
            eta = None  # broker-held delays count whole seconds; anything sooner runs now
        self.celery.send_task(
            message.task,
            args=[message.run_id],
            task_id=message.run_id,
            queue=message.queue,
            routing_key=message.queue,
            eta=eta,
            headers={
                name: value
                for name, value in (
                    (TENANT_HEADER, message.tenant_id),
                    (REQUEST_ID_HEADER, message.request_id),
                    (TRACE_PARENT_HEADER, message.trace_parent),
                )
                if value
            },
            **options,
        )

    def _publish_one(self, burst: _Burst, message: RunMessage, origin: str, reply_to: str) -> None:
        """What `_send` publishes, built by Celery's own message builder (`as_task_v2`) and
        published by kombu, without `send_task`'s per-call routing and option merging (half
        of its CPU): the messages are the same (tests/integration/platform/test_bursts.py)."""
        exchange, routing_key, eta = TASK_EXCHANGE.name, message.queue, message.eta
        if eta is not None:
            countdown = (eta - datetime.now(UTC)).total_seconds()
            if countdown < MIN_DELAY_SECONDS:
                eta = None
            else:
                exchange = DELAYED_EXCHANGE
                routing_key = calculate_routing_key(int(countdown), message.queue)
        headers, properties, body, _ = self.celery.amqp.as_task_v2(
            message.run_id,
            message.task,
            args=[message.run_id],
            eta=eta,
            argsrepr=repr([message.run_id]),
            kwargsrepr="{}",
            origin=origin,
            reply_to=reply_to,
            ignore_result=None,  # what send_task passes when the caller gives none
        )
        if message.tenant_id:
            headers[TENANT_HEADER] = message.tenant_id
        if message.request_id:
            headers[REQUEST_ID_HEADER] = message.request_id
        if message.trace_parent:
            headers[TRACE_PARENT_HEADER] = message.trace_parent
        burst.producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            serializer="json",
            delivery_mode=PERSISTENT,
            headers=headers,
            declare=[],
            retry=False,
            **properties,
        )

    def _open_burst(self) -> _Burst:
        # A connection without py-amqp's `confirm_publish` (the app's setting), whose channels
        # therefore publish without waiting for each confirm; confirm mode is turned on by
        # hand and the acks are counted as they come (see publish_many_sync).
        connection = self.celery.connection_for_write(transport_options={"confirm_publish": False})
        connection.ensure_connection(max_retries=1, timeout=self.timeout)
        channel = connection.channel()
        channel.confirm_select()
        burst = _Burst(connection, channel, None)
        channel.events["basic_ack"].add(burst.on_ack)
        channel.events["basic_nack"].add(burst.on_nack)
        burst.producer = self.celery.amqp.Producer(channel, auto_declare=False)
        return burst

    def _close_burst(self) -> None:
        burst, self._burst = self._burst, None
        if burst is not None:
            try:
                burst.connection.release()
            except Exception as exc:  # a broken connection may fail to close; it is dropped
                logger.debug("burst connection not closed cleanly", extra={"error": repr(exc)})

    def publish_many_sync(self, messages: Sequence[RunMessage]) -> list[bool]:
        """Publish `messages` in one burst and wait (at most `timeout` seconds) for the
        broker's confirms: for each message, whether the broker confirmed it. A message not
        confirmed may still have reached a queue (the broker failed before it said so);
        the worker drops the message of a run the ledger does not hold."""
        self.declare_topology()
        if not self.confirms:  # Redis (standalone): no confirms; a message sent is taken
            done: list[bool] = []
            for message in messages:
                try:
                    self._send(message)
                except Exception as exc:
                    logger.warning("publish failed", extra={"error": repr(exc)})
                    break
                done.append(True)
            return done + [False] * (len(messages) - len(done))
        with self._burst_lock:
            return self._publish_burst(messages)

    def _publish_burst(self, messages: Sequence[RunMessage]) -> list[bool]:
        deadline = time.monotonic() + self.timeout
        tags: list[int] = []
        try:
            if self._burst is None:
                self._burst = self._open_burst()
            burst = self._burst
            origin, reply_to = anon_nodename(), self.celery.thread_oid
            for message in messages:
                self._publish_one(burst, message, origin, reply_to)
                burst.sent += 1
                tags.append(burst.sent)
            unsettled = 0  # tags[:unsettled] are settled; a later one may be already
            while True:
                while unsettled < len(tags) and burst.settled(tags[unsettled]):
                    unsettled += 1
                if unsettled == len(tags):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no publisher confirm in time")
                burst.connection.drain_events(timeout=remaining)
        except Exception as exc:
            logger.warning(
                "burst publish failed",
                extra={"sent": len(tags), "of": len(messages), "error": repr(exc)},
            )
            burst_lost = self._burst
            self._close_burst()  # its confirms can no longer be told apart: a new channel
            if burst_lost is None:
                return [False] * len(messages)
            known = [burst_lost.confirmed(tag) for tag in tags]
            return known + [False] * (len(messages) - len(known))
        confirmed = [burst.confirmed(tag) for tag in tags]
        if burst.nacked:
            # RabbitMQ keeps refusing on a channel whose message a full queue (overflow:
            # reject-publish) refused, even once the queue has room: the next burst opens
            # a channel of its own.
            self._close_burst()
        else:
            burst.forget(tags[-1] if tags else 0)
        return confirmed

    async def publish_many(self, messages: Sequence[RunMessage]) -> list[bool]:
        """`publish_many_sync` off the loop. Never raises: a broker that fails answers False
        for what it did not confirm."""
        if not messages:
            return []
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self.publish_many_sync, messages), self.timeout * 2 + 1
            )
        except Exception as exc:
            logger.warning("burst publish failed", extra={"error": repr(exc)})
            return [False] * len(messages)

    def close(self) -> None:
        with self._burst_lock:
            self._close_burst()

    def publish_sync(
        self,
        run_id: str,
        task: str,
        queue: str,
        eta: datetime | None,
        tenant_id: str | None,
        request_id: str | None = None,
    ) -> None:
        """One message as Celery's `send_task` publishes it, waiting for its confirm: what
        the Redis transport sends, and what a burst's messages are checked against."""
        self.declare_topology()
        self._send(RunMessage(run_id, task, queue, eta, tenant_id, request_id))
