"""The in-memory broker keeps the real one's promises: the same scenarios, with the same
assertions, on `tests.fakes.broker.InMemoryBroker` and on the local RabbitMQ with the
platform's topology (a vhost of the test's own, the platform's publisher, a consumer that
settles as Celery does for `platform.delivery.settle`).

What the tests of the worker's core rely on: confirmed publishes are taken in order; an ack
removes; a reject back counts a delivery and, past the delivery limit, dead-letters the
message (`delivery_limit`); a reject dead-letters it (`rejected`); a lost connection returns
what was unsettled, redelivered; a delayed message is neither counted nor taken before it is
due; a retry acks and sends a copy due later."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError

from switchyard.platform.celery_app import create_celery
from switchyard.platform.delivery import DELIVERY_COUNT_HEADER, Settlement
from switchyard.platform.publisher import RunMessage, RunPublisher
from switchyard.platform.topology import WORK_QUEUES
from switchyard.settings import Settings
from tests.fakes.broker import DEAD_LETTERS, InMemoryBroker, in_seconds
from tests.fixtures.gateway import SettingsFactory

DEFAULT_QUEUE = WORK_QUEUES[0]
LIMIT = 2  # deliveries a message may be returned after its first


class Broker(Protocol):
    async def publish_many(self, messages: Sequence[RunMessage]) -> list[bool]: ...
    def take(self, queue: str) -> Any: ...
    def settle(self, taken: Any, settlement: Settlement) -> None: ...
    def lose_connection(self) -> int: ...
    def depth(self, queue: str) -> int: ...
    def dead_letters(self) -> list[tuple[str, str | None]]: ...


@dataclass(frozen=True)
class AmqpTaken:
    tag: int
    run_id: str
    redelivered: bool


class RabbitMQ:
    """The platform's topology on a vhost, taken from and settled as Celery's consumer does
    for each settlement (`platform.delivery.settle`: ack, Ignore, Reject with and without
    requeue, `Task.retry`'s copy through the broker-held delay)."""

    def __init__(self, settings: Settings) -> None:
        url = settings.celery_broker_url
        assert url is not None
        self.url = url.get_secret_value()
        self.publisher = RunPublisher(create_celery(settings, self.url), LIMIT, 5.0)
        self.publisher.declare_topology()
        self.connection = Connection(self.url)
        self.channel = self.connection.channel()
        self.unsettled: list[int] = []

    async def publish_many(self, messages: Sequence[RunMessage]) -> list[bool]:
        return await self.publisher.publish_many(messages)

    def take(self, queue: str) -> AmqpTaken | None:
        message = self.channel.basic_get(queue, no_ack=False)
        if message is None:
            return None
        headers = message.headers or {}
        self.unsettled.append(message.delivery_tag)
        count = headers.get(DELIVERY_COUNT_HEADER)
        return AmqpTaken(
            message.delivery_tag,
            str(headers["id"]),
            bool(message.delivery_info.get("redelivered")) or bool(count),
        )

    def settle(self, taken: AmqpTaken, settlement: Settlement) -> None:
        self.unsettled.remove(taken.tag)
        kind = settlement.kind
        if kind in ("ack", "ignore", "fail"):
            self.channel.basic_ack(taken.tag)
        elif kind == "requeue":
            self.channel.basic_reject(taken.tag, requeue=True)
        elif kind == "reject":
            self.channel.basic_reject(taken.tag, requeue=False)
        else:  # Task.retry: a copy sent with a countdown (the broker-held delay), then acked
            self.publisher.celery.send_task(
                "system.echo",
                args=[taken.run_id],
                task_id=taken.run_id,
                queue=DEFAULT_QUEUE,
                routing_key=DEFAULT_QUEUE,
                countdown=settlement.delay,
            )
            self.channel.basic_ack(taken.tag)

    def lose_connection(self) -> int:
        lost = len(self.unsettled)
        self.connection.close()
        self.unsettled.clear()
        self.connection = Connection(self.url)
        self.channel = self.connection.channel()
        return lost

    def depth(self, queue: str) -> int:
        try:
            _, count, _ = self.channel.queue_declare(queue=queue, passive=True)
        except ChannelError:
            self.channel = self.connection.channel()
            return 0
        return int(count)

    def dead_letters(self) -> list[tuple[str, str | None]]:
        found: list[tuple[str, str | None]] = []
        while (message := self.channel.basic_get(DEAD_LETTERS, no_ack=True)) is not None:
            headers = message.headers or {}
            reason = headers.get("x-first-death-reason")
            found.append((str(headers["id"]), None if reason is None else str(reason)))
        return found

    def close(self) -> None:
        self.connection.close()
        self.publisher.close()


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Iterator[Broker]:
    if request.param == "memory":
        yield InMemoryBroker(delivery_limit=LIMIT)
        return
    url = request.getfixturevalue("own_broker")
    rabbitmq = RabbitMQ(make_settings(celery_broker_url=url, task_delivery_limit=LIMIT))
    yield rabbitmq
    rabbitmq.close()


def message(eta_seconds: float | None = None) -> RunMessage:
    eta = None if eta_seconds is None else in_seconds(eta_seconds)
    return RunMessage(str(uuid.uuid4()), "system.echo", DEFAULT_QUEUE, eta, str(uuid.uuid4()))


def run_id(taken: Any) -> str:
    return str(taken.run_id if isinstance(taken, AmqpTaken) else taken.message.run_id)


def take_within(broker: Broker, within: float) -> Any:
    deadline = time.monotonic() + within
    while (taken := broker.take(DEFAULT_QUEUE)) is None:
        assert time.monotonic() < deadline, "nothing to take in time"
        time.sleep(0.05)
    return taken


async def test_confirmed_messages_are_taken_in_order_and_an_ack_removes_them(
    broker: Broker,
) -> None:
    sent = [message() for _ in range(3)]
    assert await broker.publish_many(sent) == [True, True, True]
    assert broker.depth(DEFAULT_QUEUE) == 3

    taken = [take_within(broker, 5) for _ in sent]
    assert [run_id(t) for t in taken] == [m.run_id for m in sent]
    assert not any(t.redelivered for t in taken)
    assert broker.depth(DEFAULT_QUEUE) == 0  # unsettled: not ready
    for each in taken:
        broker.settle(each, Settlement("ack"))
    assert broker.lose_connection() == 0
    assert broker.take(DEFAULT_QUEUE) is None
    assert broker.dead_letters() == []


async def test_a_message_rejected_back_is_redelivered_until_its_delivery_limit(
    broker: Broker,
) -> None:
    sent = message()
    await broker.publish_many([sent])
    deliveries = []
    while (taken := broker.take(DEFAULT_QUEUE)) is not None:
        assert run_id(taken) == sent.run_id
        deliveries.append(taken.redelivered)
        broker.settle(taken, Settlement("requeue"))
    assert deliveries == [False] + [True] * LIMIT  # the first, and LIMIT returns
    assert broker.dead_letters() == [(sent.run_id, "delivery_limit")]


async def test_a_returned_message_is_taken_before_the_ones_behind_it(broker: Broker) -> None:
    first, second = message(), message()
    await broker.publish_many([first, second])
    taken = take_within(broker, 5)
    broker.settle(taken, Settlement("requeue"))
    again = take_within(broker, 5)
    assert (run_id(again), again.redelivered) == (first.run_id, True)
    broker.settle(again, Settlement("ack"))
    broker.settle(take_within(broker, 5), Settlement("ack"))


async def test_a_rejected_message_is_dead_lettered(broker: Broker) -> None:
    sent = message()
    await broker.publish_many([sent])
    broker.settle(take_within(broker, 5), Settlement("reject"))
    assert broker.take(DEFAULT_QUEUE) is None
    assert broker.dead_letters() == [(sent.run_id, "rejected")]


async def test_a_lost_connection_returns_what_was_unsettled_redelivered(broker: Broker) -> None:
    settled, lost = message(), message()
    await broker.publish_many([settled, lost])
    broker.settle(take_within(broker, 5), Settlement("ack"))
    take_within(broker, 5)
    assert broker.lose_connection() == 1
    again = take_within(broker, 5)
    assert (run_id(again), again.redelivered) == (lost.run_id, True)
    broker.settle(again, Settlement("ack"))


async def test_a_delayed_message_is_neither_counted_nor_taken_before_it_is_due(
    broker: Broker,
) -> None:
    published = time.monotonic()
    delayed = message(eta_seconds=2)
    await broker.publish_many([delayed])
    assert broker.depth(DEFAULT_QUEUE) == 0
    assert broker.take(DEFAULT_QUEUE) is None
    taken = take_within(broker, 10)
    assert run_id(taken) == delayed.run_id
    assert time.monotonic() - published >= 1.0  # whole seconds: due after 1 s at the earliest
    broker.settle(taken, Settlement("ack"))


async def test_a_retry_acks_and_sends_a_copy_due_later(broker: Broker) -> None:
    sent = message()
    await broker.publish_many([sent])
    broker.settle(take_within(broker, 5), Settlement("retry", delay=1))
    assert broker.take(DEFAULT_QUEUE) is None  # the copy is not due yet
    copy = take_within(broker, 10)
    assert run_id(copy) == sent.run_id
    broker.settle(copy, Settlement("ack"))
    assert broker.lose_connection() == 0
    assert broker.dead_letters() == []
