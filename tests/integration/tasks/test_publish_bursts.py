"""A burst publishes the very message `send_task` would, on a real RabbitMQ: same headers,
properties, body and routing, for a run due now and for a delayed one (Celery's native
delayed delivery), so a worker cannot tell the two paths apart."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu import Connection

from switchyard.platform.broker import Broker
from switchyard.platform.publisher import RunMessage
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.tasks import DELIVERY_LIMIT


@pytest.fixture
def broker(make_settings: SettingsFactory, own_broker: str) -> Iterator[Broker]:
    created = Broker.create(
        make_settings(celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT)
    )
    assert created is not None
    yield created
    created.close()


def received(url: str, count: int, within: float = 15.0) -> list[dict[str, Any]]:
    """The next `count` messages of the `default` queue, as a worker would see them."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    with Connection(url) as connection:
        channel = connection.channel()
        while len(messages) < count and time.monotonic() < deadline:
            message = channel.basic_get("default", no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            messages.append(
                {
                    "headers": dict(message.headers),
                    "properties": {
                        key: value
                        for key, value in message.properties.items()
                        if key != "application_headers"
                    },
                    "body": json.loads(message.body),
                    "content_type": message.content_type,
                    "content_encoding": message.content_encoding,
                }
            )
    assert len(messages) == count, f"{len(messages)} of {count} messages arrived"
    return messages


def normalised(message: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The message with its run id, the instant of its eta and the broker's times taken out."""
    text = json.dumps(message, sort_keys=True, default=str).replace(run_id, "<run>")
    shaped: dict[str, Any] = json.loads(text)
    if shaped["headers"].get("eta"):
        shaped["headers"]["eta"] = "<eta>"
    # A delayed message passed RabbitMQ's delay queues, which stamp when it left each one (to
    # the second: two messages a moment apart may straddle one).
    for death in shaped["headers"].get("x-death") or []:
        death["time"] = "<time>"
    return shaped


# Delayed by 5 s: a message whose eta is under 1 s away when it is sent goes out due now, and
# on a loaded machine (CI) the first publish of the test took over 1 s.
@pytest.mark.parametrize("delay", [None, 5.0], ids=["due-now", "delayed"])
def test_a_burst_message_is_the_message_send_task_publishes(
    broker: Broker, own_broker: str, delay: float | None
) -> None:
    broker.publisher.declare_topology()  # before the eta: connecting is not part of the delay
    eta = None if delay is None else datetime.now(UTC) + timedelta(seconds=delay)
    tenant = str(uuid.uuid4())
    alone = RunMessage(str(uuid.uuid4()), "system.echo", "default", eta, tenant, "req-1")
    burst = RunMessage(str(uuid.uuid4()), "system.echo", "default", eta, tenant, "req-1")
    broker.publisher.publish_sync(
        alone.run_id, alone.task, alone.queue, alone.eta, alone.tenant_id, alone.request_id
    )
    assert broker.publisher.publish_many_sync([burst]) == [True]

    messages = received(own_broker, 2, within=30)
    by_id = {message["headers"]["id"]: message for message in messages}
    assert set(by_id) == {alone.run_id, burst.run_id}
    assert normalised(by_id[burst.run_id], burst.run_id) == normalised(
        by_id[alone.run_id], alone.run_id
    )
    assert by_id[burst.run_id]["headers"]["switchyard_tenant"] == tenant
    assert bool(by_id[burst.run_id]["headers"]["eta"]) is (delay is not None)
