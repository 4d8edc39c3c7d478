"""`switchyard healthcheck`: is the role running in this container healthy? (Docker HEALTHCHECK)"""

from __future__ import annotations

import threading

import httpx

from switchyard.settings import Role, Settings

TIMEOUT_SECONDS = 3.0
CONNECT_TIMEOUT_SECONDS = 2.0
# The whole check, whatever hangs inside it (Docker's own timeout is a last resort).
DEADLINE_SECONDS = 8.0


def _gateway(settings: Settings) -> tuple[bool, str]:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    url = f"http://{host}:{settings.api_port}/health/live"
    try:
        response = httpx.get(url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return False, f"{url}: HTTP {response.status_code}"
    return True, f"{url}: ok"


def _heartbeat(settings: Settings, role: str) -> tuple[dict[str, object] | None, str]:
    from switchyard.platform.heartbeat import read_heartbeat

    path = settings.heartbeat_file(role)
    try:
        content, age = read_heartbeat(path)
    except (OSError, ValueError, KeyError) as exc:
        return None, f"{role}: no heartbeat at {path} ({type(exc).__name__})"
    if age > settings.heartbeat_max_age_seconds:
        limit = settings.heartbeat_max_age_seconds
        return None, f"{role}: heartbeat is {age:.0f} s old (limit {limit:g} s)"
    return content, f"{role}: heartbeat {age:.1f} s old"


def _processes(settings: Settings) -> tuple[list[dict[str, object]] | None, str]:
    """The worker's processes from its heartbeat, or None with why the role is unhealthy:
    a heartbeat missing or stale, a process not heartbeating, a loop stalled too long."""
    content, reason = _heartbeat(settings, "worker")
    if content is None:
        return None, reason
    listed = content.get("processes")
    processes = [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else []
    if len(processes) < settings.worker_processes:
        return None, (
            f"{reason}; {len(processes)} of {settings.worker_processes} worker processes "
            "are heartbeating"
        )
    for process in processes:
        stalled = process.get("stalled_seconds")
        if isinstance(stalled, int | float) and stalled >= settings.worker_stall_unhealthy_seconds:
            return None, (
                f"{reason}; worker process {process.get('pid')}: event loop stalled for "
                f"{stalled:.1f} s (limit {settings.worker_stall_unhealthy_seconds:g} s)"
            )
    return processes, reason


def worker_served(settings: Settings) -> tuple[bool, str]:
    """What the worker's metrics port answers at /health (a probe that starts no process): its
    own state from the heartbeat, without the broker's control ping."""
    processes, reason = _processes(settings)
    return processes is not None, reason


def _worker(settings: Settings) -> tuple[bool, str]:
    processes, reason = _processes(settings)
    if processes is None:
        return False, reason
    from switchyard.platform.broker import Broker

    broker = Broker.create(settings)
    if broker is None:
        return False, "worker: CELERY_BROKER_URL is not set"
    hostnames = [str(process.get("hostname")) for process in processes]
    try:
        with broker.celery.connection_for_write(
            connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as connection:
            connection.ensure_connection(max_retries=0, timeout=CONNECT_TIMEOUT_SECONDS)
            replies = broker.celery.control.ping(
                destination=hostnames, timeout=TIMEOUT_SECONDS, connection=connection
            )
    except Exception as exc:  # the transports raise their own kinds; all mean "no answer"
        # A broker outage is not this worker's fault, and restarting it would not help: every
        # worker would be restarted while the broker is down. It reconnects by itself.
        return True, (
            f"{reason}; broker unreachable ({type(exc).__name__}: {exc}), not this worker's "
            "fault: it reconnects"
        )
    finally:
        broker.close()
    answered = {name for reply in replies or [] for name in reply}
    silent = [name for name in hostnames if name not in answered]
    if silent:
        return False, f"{reason}; node {', '.join(silent)} did not answer a control ping"
    return True, f"{reason}; node {', '.join(hostnames)} answered"


# A beat whose ticks keep failing is alive but publishes nothing: unhealthy.
BEAT_FAILED_TICKS_UNHEALTHY = 3


def backup_served(settings: Settings) -> tuple[bool, str]:
    """A scheduled backup role is healthy while it heartbeats (once, its exit code tells)."""
    content, reason = _heartbeat(settings, "backup")
    return content is not None, reason


def beat_served(settings: Settings) -> tuple[bool, str]:
    """The beat's health (the same at its metrics port's /health as from the command)."""
    return _beat(settings)


def _beat(settings: Settings) -> tuple[bool, str]:
    content, reason = _heartbeat(settings, "beat")
    if content is None:
        return False, reason
    failed = content.get("failed_ticks")
    if isinstance(failed, int) and failed >= BEAT_FAILED_TICKS_UNHEALTHY:
        return False, f"{reason}; the last {failed} ticks failed (see the beat's log)"
    since = content.get("leader_since")
    at = content.get("at")
    if isinstance(since, int | float) and isinstance(at, int | float):
        return True, f"{reason}; leader, lock held {at - since:.0f} s"
    return True, f"{reason}; standby"


def check_within(
    role: Role, settings: Settings, deadline: float = DEADLINE_SECONDS
) -> tuple[bool, str]:
    """`check`, but unhealthy when it takes longer than `deadline` seconds."""
    outcome: list[tuple[bool, str]] = []

    def run() -> None:
        try:
            outcome.append(check(role, settings))
        except Exception as exc:
            outcome.append((False, f"{role.value}: check failed ({type(exc).__name__}: {exc})"))

    thread = threading.Thread(target=run, name="healthcheck", daemon=True)
    thread.start()
    thread.join(deadline)
    if not outcome:
        return False, f"{role.value}: no answer within {deadline:g} s"
    return outcome[0]


def check(role: Role, settings: Settings) -> tuple[bool, str]:
    """Whether the role is healthy, and one line saying why."""
    if role is Role.MIGRATE:
        return True, "migrate is a one-shot role: its exit code is its health"
    if role is Role.WORKER:
        return _worker(settings)
    if role is Role.BEAT:
        return _beat(settings)
    if role is Role.BACKUP:
        if not settings.backup_schedule.strip():
            return True, "backup without BACKUP_SCHEDULE is one-shot: its exit code is its health"
        return backup_served(settings)
    return _gateway(settings)
