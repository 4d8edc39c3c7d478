"""RabbitMQ topology: quorum work queues that dead-letter into one archive queue.

Every process declares exactly these arguments: RabbitMQ refuses a re-declaration with
different ones (406 PRECONDITION_FAILED)."""

from __future__ import annotations

from typing import Any, Final

from amqp.exceptions import PreconditionFailed
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

WORK_QUEUES: Final = ("default", "llm")
TASK_EXCHANGE: Final = Exchange("switchyard.tasks", type="topic", durable=True)
DEAD_LETTER_EXCHANGE: Final = Exchange("switchyard.dead-letter", type="fanout", durable=True)
DEAD_LETTER_QUEUE: Final = Queue(
    "switchyard.dead-letters",
    exchange=DEAD_LETTER_EXCHANGE,
    routing_key="#",
    durable=True,
    queue_arguments={"x-queue-type": "quorum"},
)


def work_queue(name: str, delivery_limit: int) -> Queue:
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
        "x-delivery-limit": delivery_limit,
    }
    return Queue(
        name, exchange=TASK_EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments
    )


def work_queues(delivery_limit: int) -> list[Queue]:
    return [work_queue(name, delivery_limit) for name in WORK_QUEUES]


class TopologyMismatchError(Exception):
    """A queue exists with other arguments than this deployment declares: RabbitMQ refuses
    the declaration (406), and with it every publish, until the setting or the queue changes."""

    def __init__(self, queue: str, delivery_limit: int, reply: str) -> None:
        super().__init__(
            f"TASK_DELIVERY_LIMIT: the queue {queue!r} exists with other arguments than this "
            f"deployment declares (x-delivery-limit {delivery_limit}; RabbitMQ: {reply}). Set "
            "TASK_DELIVERY_LIMIT back, or drain and delete the queue so that it is declared anew"
        )
        self.queue = queue


def declare(connection: Connection, delivery_limit: int) -> None:
    """Declare every exchange, queue and binding (idempotent), delayed delivery included;
    TopologyMismatchError when a queue exists with other arguments."""
    channel = connection.default_channel
    queues = work_queues(delivery_limit)
    for queue in (DEAD_LETTER_QUEUE, *queues):
        try:
            queue(channel).declare()
        except PreconditionFailed as refused:
            reply = str(getattr(refused, "reply_text", refused))
            raise TopologyMismatchError(str(queue.name), delivery_limit, reply) from None
    declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
    for queue in queues:
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
