"""A worker whose broker went away retries the connection at most RECONNECT_MAX_SECONDS apart
(kombu's own back-off reaches 30 s): it is consuming again soon after the broker returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery.utils.imports import symbol_by_name

from switchyard.domains import load_task_modules
from switchyard.platform.celery_app import create_celery
from switchyard.platform.worker import (
    RECONNECT_MAX_SECONDS,
    ReconnectingConsumer,
    configure_worker,
)
from switchyard.settings import Settings


class Connection:
    def __init__(self) -> None:
        self.retried_with: dict[str, Any] = {}

    def ensure_connection(self, *args: Any, **options: Any) -> Connection:
        self.retried_with = options
        return self


def test_the_worker_runs_the_reconnecting_consumer(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, environment="test")
    celery = create_celery(settings, "amqp://guest:guest@127.0.0.1:5672//")
    configure_worker(celery, load_task_modules(), tmp_path / "heartbeat", settings)
    assert symbol_by_name(celery.conf.worker_consumer) is ReconnectingConsumer


def test_reconnection_attempts_are_at_most_a_few_seconds_apart() -> None:
    settings = Settings(_env_file=None, environment="test")
    consumer = object.__new__(ReconnectingConsumer)  # no worker around it
    consumer.app = create_celery(settings, "amqp://guest:guest@127.0.0.1:5672//")
    consumer.first_connection_attempt = False
    consumer.broker_connection_retry_attempt = 0
    connection = Connection()
    assert consumer.ensure_connected(connection) is connection
    assert connection.retried_with["interval_max"] == RECONNECT_MAX_SECONDS <= 5
    assert connection.retried_with["interval_start"] <= 1
    assert "callback" in connection.retried_with  # Celery's own options are kept
