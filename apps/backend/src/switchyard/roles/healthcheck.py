"""`switchyard healthcheck`: is the role running in this container healthy? (Docker HEALTHCHECK)"""

from __future__ import annotations

import httpx

from switchyard.settings import Role, Settings

TIMEOUT_SECONDS = 3.0


def check(role: Role, settings: Settings) -> tuple[bool, str]:
    """Whether the role is healthy, and one line saying why."""
    if role is Role.MIGRATE:
        return True, "migrate is a one-shot role: its exit code is its health"
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    url = f"http://{host}:{settings.api_port}/health/live"
    try:
        response = httpx.get(url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return False, f"{url}: HTTP {response.status_code}"
    return True, f"{url}: ok"
