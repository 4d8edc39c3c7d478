"""Publishing runs to the broker, with confirms and a bound on the time it may take."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime

from celery import Celery

from switchyard.platform import topology
from switchyard.platform.celery_app import broker_is_amqp

logger = logging.getLogger(__name__)

MIN_DELAY_SECONDS = 1.0
# Every run message names its tenant; the worker refuses a run whose ledger row disagrees.
TENANT_HEADER = "switchyard_tenant"
# The request id of the HTTP call that submitted the run: the worker logs the run under it.
REQUEST_ID_HEADER = "switchyard_request_id"


class BrokerUnavailableError(Exception):
    """The broker did not take the message in time."""


class RunPublisher:
    def __init__(self, celery: Celery, delivery_limit: int, timeout: float) -> None:
        self.celery = celery
        self.delivery_limit = delivery_limit
        self.timeout = timeout
        self._declared = False
        self._lock = threading.Lock()

    def declare_topology(self) -> None:
        with self._lock:
            if self._declared or not broker_is_amqp(str(self.celery.conf.broker_url)):
                self._declared = True
                return
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=self.timeout)
                topology.declare(connection, self.delivery_limit)
            self._declared = True

    def publish_sync(
        self,
        run_id: str,
        task: str,
        queue: str,
        eta: datetime | None,
        tenant_id: str | None,
        request_id: str | None = None,
    ) -> None:
        self.declare_topology()
        if eta is not None and (eta - datetime.now(UTC)).total_seconds() < MIN_DELAY_SECONDS:
            eta = None  # broker-held delays count whole seconds; anything sooner runs now
        self.celery.send_task(
            task,
            args=[run_id],
            task_id=run_id,
            queue=queue,
            routing_key=queue,
            eta=eta,
            headers={
                name: value
                for name, value in ((TENANT_HEADER, tenant_id), (REQUEST_ID_HEADER, request_id))
                if value
            },
        )

    async def publish(
        self,
        run_id: str,
        task: str,
        queue: str,
        eta: datetime | None,
        tenant_id: str | None,
        request_id: str | None = None,
    ) -> None:
        """Publish or raise BrokerUnavailableError within `timeout` seconds."""
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    self.publish_sync, run_id, task, queue, eta, tenant_id, request_id
                ),
                self.timeout,
            )
        except Exception as exc:
            logger.warning("publish failed", extra={"task_id": run_id, "error": repr(exc)})
            raise BrokerUnavailableError(str(exc) or type(exc).__name__) from exc
