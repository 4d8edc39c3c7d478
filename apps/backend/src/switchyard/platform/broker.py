"""The broker side of a role: its Celery app, the run publisher and a health probe."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from celery import Celery

from switchyard.platform.celery_app import Transport, create_celery
from switchyard.platform.publisher import RunPublisher
from switchyard.settings import Settings


def broker_check_name(settings: Settings) -> str:
    """`rabbitmq` for an AMQP broker (and none at all); `broker` for another transport."""
    url = settings.celery_broker_url
    return "rabbitmq" if url is None else Transport.of(url.get_secret_value()).check_name


@dataclass
class Broker:
    celery: Celery
    publisher: RunPublisher

    @classmethod
    def create(cls, settings: Settings) -> Broker | None:
        if settings.celery_broker_url is None:
            return None
        celery = create_celery(settings, settings.celery_broker_url.get_secret_value())
        publisher = RunPublisher(
            celery, settings.task_delivery_limit, settings.broker_publish_timeout_seconds
        )
        return cls(celery, publisher)

    def _connect(self) -> None:
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0, timeout=self.publisher.timeout)

    async def probe(self) -> None:
        """Raise unless a broker connection can be opened."""
        await asyncio.to_thread(self._connect)

    def close(self) -> None:
        self.publisher.close()
        self.celery.close()
