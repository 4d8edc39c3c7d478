"""A worker whose broker went away retries the connection at most RECONNECT_MAX_SECONDS apart
(kombu's own back-off reaches 30 s): it is consuming again soon after the broker returns.
Through Celery's public `amqp` class option, not by patching the connection it hands out."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection

from switchyard.platform.celery_app import (
    RECONNECT_MAX_SECONDS,
    ReconnectingConnection,
    create_celery,
)
from switchyard.settings import Settings


def test_the_consumers_connection_retries_a_few_seconds_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    celery = create_celery(Settings(_env_file=None, environment="test"), "amqp://127.0.0.1:5672//")
    connection = celery.connection_for_read()  # what Celery's consumer connects with
    assert isinstance(connection, ReconnectingConnection)
    assert isinstance(connection.clone(), ReconnectingConnection)
    asked: dict[str, Any] = {}

    def ensure(
        self: Connection, errback: Any = None, max_retries: Any = None, **options: Any
    ) -> None:
        asked.update(errback=errback, max_retries=max_retries, **options)

    monkeypatch.setattr(Connection, "_ensure_connection", ensure)
    errback = object()
    # As Celery's consumer asks it (celery.worker.consumer.Consumer.ensure_connected):
    connection.ensure_connection(errback, 100, callback=print)
    assert asked["interval_max"] == RECONNECT_MAX_SECONDS <= 5
    assert asked["interval_start"] <= 1
    assert (asked["errback"], asked["max_retries"], asked["callback"]) == (errback, 100, print)
