"""The one Celery app of every role, configured from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery, states
from celery.app.amqp import AMQP
from celery.backends.base import DisabledBackend
from kombu import Connection

from switchyard.platform.topology import TASK_EXCHANGE, work_queues
from switchyard.settings import Settings


@dataclass(frozen=True, slots=True)
class Transport:
    """What the broker behind a URL offers: the one place RabbitMQ and Redis differ.

    RabbitMQ (every role in production): publisher confirms, quorum queues that count each
    message's deliveries, a dead-letter exchange, a topology declared up front. Redis (the
    standalone role's embedded broker) has none of them: a message sent is taken, a delivery
    count is not kept, a dead letter is archived by the worker itself, queues exist once used."""

    amqp: bool

    @classmethod
    def of(cls, url: str) -> Transport:
        return cls(url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"))

    @property
    def confirms(self) -> bool:
        return self.amqp

    @property
    def counts_deliveries(self) -> bool:
        return self.amqp

    @property
    def dead_letter_exchange(self) -> bool:
        return self.amqp

    @property
    def declared_topology(self) -> bool:
        return self.amqp

    @property
    def check_name(self) -> str:
        """Its name in /health: `rabbitmq`, or `broker` for another transport."""
        return "rabbitmq" if self.amqp else "broker"


AMQP_TRANSPORT = Transport(amqp=True)


def transport_of(celery: Celery) -> Transport:
    return Transport.of(str(celery.conf.broker_url))


class LedgerResults(DisabledBackend):  # type: ignore[misc]
    """Celery keeps no results: run states live in the ledger. Unlike Celery's disabled
    backend, asking a state answers PENDING (Celery knows nothing) and a revoke records
    nothing, so cancelling a run logs no 'failed to mark as revoked' warning."""

    def get_state(self, task_id: str) -> str:
        return str(states.PENDING)

    def mark_as_revoked(self, *args: Any, **kwargs: Any) -> None:
        return None


# A worker whose broker went away tries again at most this many seconds apart (kombu's own
# back-off reaches 30 s, so a worker could idle that long after the broker's return).
RECONNECT_MAX_SECONDS = 5


class ReconnectingConnection(Connection):  # type: ignore[misc]
    """kombu's connection, retrying at most RECONNECT_MAX_SECONDS apart by default (Celery's
    consumer asks `ensure_connection` with kombu's defaults)."""

    def ensure_connection(
        self,
        errback: Any = None,
        max_retries: int | None = None,
        interval_start: float = 1,
        interval_step: float = 1,
        interval_max: float = RECONNECT_MAX_SECONDS,
        **options: Any,
    ) -> Connection:
        return super().ensure_connection(
            errback=errback,
            max_retries=max_retries,
            interval_start=interval_start,
            interval_step=interval_step,
            interval_max=interval_max,
            **options,
        )


class BrokerClient(AMQP):  # type: ignore[misc]
    """Celery's broker client (the `amqp` of the app), on ReconnectingConnection."""

    Connection = ReconnectingConnection


def create_celery(settings: Settings, broker_url: str) -> Celery:
    app = Celery("switchyard", set_as_current=False, amqp=f"{__name__}:BrokerClient")
    amqp = Transport.of(broker_url).amqp
    app.conf.update(
        broker_url=broker_url,
        result_backend=f"{__name__}:LedgerResults",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_publish_timeout_seconds,
        broker_transport_options=(
            {"confirm_publish": True} if amqp else {"visibility_timeout": 3600}
        ),
        task_default_queue="default",
        task_default_exchange=TASK_EXCHANGE.name,
        task_default_exchange_type="topic",
        task_default_routing_key="default",
        task_queues=work_queues(settings.task_delivery_limit) if amqp else None,
        task_create_missing_queues=not amqp,
        task_default_queue_type="quorum" if amqp else "classic",
        worker_detect_quorum_queues=amqp,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=False,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=True,
        broker_heartbeat=30,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        enable_utc=True,
    )
    return app
