"""Optional error reporting with Sentry (SENTRY_DSN), with secrets scrubbed before sending.

Sentry's own scrubber drops values under sensitive keys (headers, cookies, variables named
like passwords or tokens); `scrub` also masks secrets inside free text — bearer tokens, API
keys, JWTs and passwords in URLs — wherever they appear in the event."""

from __future__ import annotations

import re
from typing import Any

from switchyard import __version__
from switchyard.settings import Settings

FILTERED = "[Filtered]"
EXTRA_DENYLIST = [
    "authorization",
    "x-api-key",
    "x_api_key",
    "api_key",
    "apikey",
    "client_secret",
    "smtp_password",
    "password",
    "token",
    "access_token",
    "refresh_token",
    "jwt_secret",
    "data_source_keys",
    "sentry_dsn",
    "metrics_token",
    "zhipuai_api_key",
    "minio_secret_key",
    "database_url",
    "redis_url",
    "celery_broker_url",
]
_SECRETS_IN_TEXT = [
    # "Bearer <anything>"
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + FILTERED),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), FILTERED),
    # Switchyard API keys (sy_...) and refresh tokens (<uuid>.<secret>)
    (re.compile(r"\bsy_[A-Za-z0-9_-]{8,}"), FILTERED),
    # OAuth client secrets (sycs_...)
    (re.compile(r"\bsycs_[A-Za-z0-9_-]{8,}"), FILTERED),
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[\w-]{16,}"),
        FILTERED,
    ),
    # user:password@ in URLs
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@"), r"\1:" + FILTERED + "@"),
    # password=..., secret: ..., token=...
    (
        re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)(\s*[=:]\s*)[^\s,;&\"']+"),
        r"\1\2" + FILTERED,
    ),
]


def scrub_text(text: str) -> str:
    for pattern, replacement in _SECRETS_IN_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_scrub(item) for item in value)
    return value


def scrub(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """before_send: mask secrets in every string of the event."""
    scrubbed: dict[str, Any] = _scrub(event)
    return scrubbed


def init_reporting(settings: Settings, service_type: str) -> bool:
    """Start Sentry for this process when SENTRY_DSN is set; whether it was started."""
    if settings.sentry_dsn is None or not settings.sentry_dsn.get_secret_value():
        return False
    import sentry_sdk
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment.value,
        release=f"switchyard@{__version__}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        include_local_variables=False,
        max_request_body_size="never",
        event_scrubber=EventScrubber(denylist=DEFAULT_DENYLIST + EXTRA_DENYLIST, recursive=True),
        before_send=scrub,  # type: ignore[arg-type]
        before_breadcrumb=lambda crumb, hint: _scrub(crumb),
    )
    sentry_sdk.set_tag("service_type", service_type)
    return True
