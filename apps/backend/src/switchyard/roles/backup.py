"""The `backup` role: verified backups of the deployment (platform.backup), once or on
BACKUP_SCHEDULE. Once, it exits 0 with the backup kept or 1 naming why not; scheduled, a failed
backup is logged and counted and the next one is tried at its time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import UTC, datetime
from functools import partial

from croniter import croniter
from prometheus_client import REGISTRY, Counter, Gauge

from switchyard.errors import RoleConfigurationError
from switchyard.platform.backup import BackupError, Backups, taken_at
from switchyard.platform.heartbeat import write_heartbeat
from switchyard.platform.metrics import HOST, MetricsServer
from switchyard.roles import healthcheck
from switchyard.services.objects import create_object_store
from switchyard.services.vectors import VectorStore
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

LAST_SUCCESS = Gauge(
    "switchyard_backup_last_success_timestamp_seconds",
    "Unix time of the last backup kept (verified unless BACKUP_VERIFY=false)",
)
LAST_SIZE = Gauge("switchyard_backup_last_size_bytes", "Size of the last backup kept")
FAILURES = Counter("switchyard_backup_failures_total", "Backups that could not be made or kept")
HEARTBEAT_SECONDS = 30.0


def check_schedule(settings: Settings) -> None:
    schedule = settings.backup_schedule.strip()
    if schedule and (len(schedule.split()) != 5 or not croniter.is_valid(schedule)):
        raise RoleConfigurationError(
            f"BACKUP_SCHEDULE: {schedule!r} is not a cron line of five fields (e.g. '0 3 * * *')"
        )


async def attempt(backups: Backups) -> bool:
    try:
        backup = await backups.run_once()
    except (BackupError, OSError) as exc:
        FAILURES.inc()
        logger.error("backup failed: %s", exc, extra={"error": str(exc)})
        return False
    except Exception:
        FAILURES.inc()
        logger.exception("backup failed")
        return False
    LAST_SUCCESS.set(time.time())
    LAST_SIZE.set(backup.size)
    return True


async def _serve(settings: Settings) -> int:
    objects = create_object_store(settings)
    vectors = VectorStore.from_settings(settings)
    backups = Backups(settings, objects, vectors)
    schedule = settings.backup_schedule.strip()
    try:
        if not schedule:
            return 0 if await attempt(backups) else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        HOST.watch(settings.var_dir)
        metrics = MetricsServer(
            REGISTRY,
            settings.metrics_host,
            settings.backup_metrics_port,
            settings.metrics_token,
            health=partial(healthcheck.backup_served, settings),
        )
        metrics.start()
        # The newest backup kept counts as the last success: a restarted role is not "stale".
        kept = await asyncio.to_thread(backups.target.names)
        if kept:
            LAST_SUCCESS.set(taken_at(kept[-1]).timestamp())
        try:
            upcoming = croniter(schedule, datetime.now(UTC)).get_next(datetime)
            logger.info("backups scheduled", extra={"schedule": schedule, "next": str(upcoming)})
            while not stop.is_set():
                write_heartbeat(settings.heartbeat_file("backup"), {"next": upcoming.isoformat()})
                wait = (upcoming - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), min(wait, HEARTBEAT_SECONDS))
                    continue
                await attempt(backups)
                upcoming = croniter(schedule, datetime.now(UTC)).get_next(datetime)
        finally:
            metrics.stop()
            settings.heartbeat_file("backup").unlink(missing_ok=True)
        return 0
    finally:
        await objects.close()
        await vectors.close()


def run(settings: Settings) -> int:
    if settings.database is None:
        raise RoleConfigurationError("DATABASE_URL: required by the backup role")
    check_schedule(settings)
    return asyncio.run(_serve(settings))
