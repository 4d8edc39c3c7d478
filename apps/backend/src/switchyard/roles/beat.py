"""The `beat` role: schedules from the database, one leader among any number of beats."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from functools import partial

from prometheus_client import REGISTRY

from switchyard.domains import registry_for
from switchyard.platform.beat import Beat
from switchyard.platform.broker import Broker, check_topology, with_broker_check
from switchyard.platform.metrics import HOST, MetricsServer
from switchyard.platform.runs import admission
from switchyard.roles import healthcheck
from switchyard.roles.worker import require, task_backend_problems
from switchyard.services.container import Services
from switchyard.services.health import announce
from switchyard.settings import Settings
from switchyard.tenants.deletion import Eraser

logger = logging.getLogger("switchyard.roles.beat")

# What a stopping beat gets to end its tick and let go of the lead. Past it, the process exits
# anyway: beat holds nothing that must finish (its lead expires, what it did not publish the
# outbox publishes), and a tick or a release waiting on a backend that died with it (a
# standalone SIGKILLed takes its PostgreSQL and Redis along) must not keep it alive.
STOP_SECONDS = 10.0


def _exit_late() -> None:
    logger.warning("beat did not stop within %s s of the signal: exiting", STOP_SECONDS)
    os._exit(0)


def _stop_within(stop: asyncio.Event, seconds: float) -> None:
    if stop.is_set():
        return
    stop.set()
    timer = threading.Timer(seconds, _exit_late)
    timer.daemon = True
    timer.start()


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop_within, stop, STOP_SECONDS)
    broker = Broker.create(settings)
    assert broker is not None
    services = Services.create(
        settings, "beat", admission=admission.dispatcher_for(broker.publisher, settings)
    )
    metrics = MetricsServer(
        REGISTRY,
        settings.metrics_host,
        settings.beat_metrics_port,
        settings.metrics_token,
        health=partial(healthcheck.beat_served, settings),
    )
    HOST.watch(settings.var_dir)
    metrics.start()
    health = services.health_monitor(with_broker_check(services, broker))
    announced = asyncio.create_task(announce(health))
    try:
        beat = Beat(
            services,
            broker.publisher,
            registry_for(settings),
            settings.heartbeat_file("beat"),
            erase_tenants_due=Eraser(services).erase_due,
        )
        await beat.run(stop)
    finally:
        announced.cancel()
        metrics.stop()
        await services.close()
        broker.close()


def run(settings: Settings) -> int:
    require(task_backend_problems(settings, "beat"))
    check_topology(settings)
    asyncio.run(_serve(settings))
    return 0
