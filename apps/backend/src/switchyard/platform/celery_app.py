"""The one Celery app of every role, configured from settings."""

from __future__ import annotations

from typing import Any

from celery import Celery, states
from celery.app.amqp import AMQP
from celery.backends.base import DisabledBackend
from kombu import Connection

from switchyard.platform.topology import TASK_EXCHANGE, work_queues
from switchyard.settings import Settings


def broker_is_amqp(url: str) -> bool:
    return url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


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
    amqp = broker_is_amqp(broker_url)
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
