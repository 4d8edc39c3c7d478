"""The `beat` role: schedules from the database, one leader among any number of beats."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import REGISTRY

from switchyard.domains import registry_for
from switchyard.platform.beat import Beat
from switchyard.platform.broker import Broker
from switchyard.platform.metrics import MetricsServer
from switchyard.roles.worker import require_task_backends
from switchyard.services.container import Services
from switchyard.settings import Settings


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    services = Services.create(settings, "beat")
    broker = Broker.create(settings)
    assert broker is not None
    metrics = MetricsServer(
        REGISTRY, settings.metrics_host, settings.beat_metrics_port, settings.metrics_token
    )
    metrics.start()
    try:
        beat = Beat(
            services,
            broker.publisher,
            registry_for(settings),
            settings.heartbeat_file("beat"),
        )
        await beat.run(stop)
    finally:
        metrics.stop()
        await services.close()
        broker.close()


def run(settings: Settings) -> int:
    require_task_backends(settings, "beat")
    asyncio.run(_serve(settings))
    return 0
