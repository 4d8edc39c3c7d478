"""The broker side of a role: its Celery app, the run publisher and a health probe."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery

from switchyard.errors import RoleConfigurationError
from switchyard.platform.celery_app import Transport, create_celery
from switchyard.platform.publisher import RunPublisher
from switchyard.platform.topology import TopologyMismatchError
from switchyard.settings import Settings

if TYPE_CHECKING:
    from switchyard.services.container import Services
    from switchyard.services.health import HealthCheck

logger = logging.getLogger(__name__)


def broker_check_name(settings: Settings) -> str:
    """`rabbitmq` for an AMQP broker (and none at all); `broker` for another transport."""
    url = settings.celery_broker_url
    return "rabbitmq" if url is None else Transport.of(url.get_secret_value()).check_name


def with_broker_check(services: Services, broker: Broker | None) -> list[HealthCheck]:
    """The role's health checks with the broker's (`rabbitmq`, or `broker`) after Redis."""
    checks = services.health_checks()
    name = broker_check_name(services.settings)
    checks.insert(2, services.health_check(name, broker.probe if broker else None))
    return checks


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
        """Raise unless a broker connection can be opened and the broker took this
        deployment's queues (a mismatch found when they were declared)."""
        if self.publisher.mismatch is not None:
            raise self.publisher.mismatch
        await asyncio.to_thread(self._connect)

    def close(self) -> None:
        self.publisher.close()
        self.celery.close()


def check_topology(settings: Settings) -> None:
    """At a role's start: declare the broker's queues; RoleConfigurationError (exit 78) when
    one exists with other arguments than the settings give (TASK_DELIVERY_LIMIT changed on a
    running deployment), which would otherwise refuse every publish. A broker that is down
    is no error here: the queues are declared at the first publish."""
    broker = Broker.create(settings)
    if broker is None:
        return
    try:
        broker.publisher.declare_topology()
    except TopologyMismatchError as mismatch:
        raise RoleConfigurationError(str(mismatch)) from None
    except Exception as exc:
        logger.warning(
            "the broker's queues were not declared at start; they are at the first publish",
            extra={"error": repr(exc)},
        )
    finally:
        broker.close()
