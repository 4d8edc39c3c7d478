"""An in-memory broker with the semantics of the platform's RabbitMQ topology, for tests.

Publishing is the platform's own interface (`platform.publisher.RunBroker`): a burst, and for
each message whether the broker confirmed it; nothing is confirmed while the broker is told to
refuse (a broker down, a full queue). Consuming is what Celery does on a worker with the
topology of `platform.topology` (quorum work queues with a delivery limit, one dead-letter
queue, broker-held delays): take a message, and settle it as `platform.delivery.settle` has
Celery settle it:

- ``ack``, ``ignore``, ``fail``: acked (Celery acks a task that raised: acks on failure);
- ``requeue``: rejected back, its delivery count one more, dead-lettered with reason
  ``delivery_limit`` once the count passes the limit (a quorum queue's `x-delivery-limit`);
- ``reject``: dead-lettered with reason ``rejected``;
- ``retry``, ``hand_back``: acked, and a copy published due `delay` seconds later, returned
  one more time (Celery's `Task.retry`: the `retries` header).

A lost connection (`lose_connection`) returns every unsettled message, each counted as a
delivery, as RabbitMQ does. `tests/integration/platform/test_broker_semantics.py` runs the
same scenarios on this broker and on the real RabbitMQ.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from switchyard.platform.delivery import Delivery, Settlement
from switchyard.platform.publisher import MIN_DELAY_SECONDS, RunMessage
from switchyard.platform.topology import DEAD_LETTER_QUEUE

DEAD_LETTERS = str(DEAD_LETTER_QUEUE.name)


@dataclass
class Envelope:
    """A message in a queue: what was published, and what the broker counts about it."""

    message: RunMessage
    due: float = 0.0  # clock time from which it can be taken (broker-held delays)
    delivery_count: int = 0  # returned to the queue by a reject or a lost connection
    returned: int = 0  # copies before this one (retries, hand-backs)
    death_reason: str | None = None  # in the dead-letter queue: why


@dataclass(frozen=True)
class Taken:
    """One delivery of a message, unsettled until `InMemoryBroker.settle`."""

    tag: int
    envelope: Envelope

    @property
    def message(self) -> RunMessage:
        return self.envelope.message

    @property
    def redelivered(self) -> bool:
        return self.envelope.delivery_count > 0

    def delivery(self) -> Delivery:
        """What the worker's core is handed for it (as `Delivery.of` reads Celery's request)."""
        message = self.envelope.message
        return Delivery(
            message_id=message.run_id,
            args=(message.run_id,),
            kwargs={},
            tenant=message.tenant_id,
            request_id=message.request_id,
            redelivered=self.redelivered or self.envelope.returned > 0,
            returned=self.envelope.returned,
        )


@dataclass
class InMemoryBroker:
    delivery_limit: int = 5
    clock: Callable[[], float] = time.time
    refusing: bool = False
    messages: list[RunMessage] = field(default_factory=list)  # every message confirmed
    queues: dict[str, deque[Envelope]] = field(default_factory=dict)
    unsettled: dict[int, Envelope] = field(default_factory=dict)
    _tags: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def publish_many(self, messages: Sequence[RunMessage]) -> list[bool]:
        if self.refusing:
            return [False] * len(messages)
        with self._lock:
            for message in messages:
                self.messages.append(message)
                self._enqueue(Envelope(message, due=self._due(message.eta)))
        return [True] * len(messages)

    def _due(self, eta: datetime | None) -> float:
        now = self.clock()
        if eta is None:
            return now
        countdown = (eta - datetime.fromtimestamp(now, UTC)).total_seconds()
        # As `RunPublisher`: the broker holds whole seconds; anything sooner is due now.
        return now if countdown < MIN_DELAY_SECONDS else now + int(countdown)

    def _enqueue(self, envelope: Envelope, *, front: bool = False) -> None:
        queue = self.queues.setdefault(envelope.message.queue, deque())
        if front:
            queue.appendleft(envelope)
        else:
            queue.append(envelope)

    def take(self, queue: str) -> Taken | None:
        """The first message of `queue` that is due, now unsettled; None when there is none."""
        with self._lock:
            waiting = self.queues.get(queue, deque())
            now = self.clock()
            for envelope in waiting:
                if envelope.due <= now:
                    waiting.remove(envelope)
                    self._tags += 1
                    self.unsettled[self._tags] = envelope
                    return Taken(self._tags, envelope)
        return None

    def settle(self, taken: Taken, settlement: Settlement) -> None:
        with self._lock:
            envelope = self.unsettled.pop(taken.tag)
            kind = settlement.kind
            if kind in ("ack", "ignore", "fail"):
                return
            if kind == "requeue":
                self._return(envelope)
            elif kind == "reject":
                self._dead_letter(envelope, "rejected")
            else:  # retry, hand_back: acked, and a copy due later
                copy = Envelope(
                    envelope.message,
                    due=self.clock() + settlement.delay,
                    returned=envelope.returned + 1,
                )
                self.messages.append(copy.message)
                self._enqueue(copy)

    def _return(self, envelope: Envelope) -> None:
        envelope.delivery_count += 1
        if envelope.delivery_count > self.delivery_limit:
            self._dead_letter(envelope, "delivery_limit")
        else:
            self._enqueue(envelope, front=True)

    def _dead_letter(self, envelope: Envelope, reason: str) -> None:
        envelope.death_reason = reason
        self.queues.setdefault(DEAD_LETTERS, deque()).append(envelope)

    def lose_connection(self) -> int:
        """The consumer's connection dropped: every unsettled message goes back, counted."""
        with self._lock:
            lost = sorted(self.unsettled.items(), reverse=True)
            self.unsettled.clear()
            for _, envelope in lost:
                self._return(envelope)
        return len(lost)

    def depth(self, queue: str) -> int:
        """Messages ready in `queue` (a delayed one counts once it is due, as RabbitMQ moves it
        into the queue then)."""
        with self._lock:
            now = self.clock()
            return sum(1 for envelope in self.queues.get(queue, ()) if envelope.due <= now)

    def dead_letters(self) -> list[tuple[str, str | None]]:
        """(run id, reason) of each dead-lettered message, oldest first."""
        with self._lock:
            return [(e.message.run_id, e.death_reason) for e in self.queues.get(DEAD_LETTERS, ())]

    def run_ids(self, task: str = "system.echo") -> list[str]:
        """The ids of the runs of `task` confirmed, in order."""
        return [message.run_id for message in self.messages if message.task == task]


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
