"""Sign-in limits of a real gateway process: forwarded headers are believed only from trusted
proxies, and failed sign-ins are limited per account whatever the address."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.fixtures.accounts import PASSWORD
from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.e2e


def gateway(
    start_role: Callable[..., RunningRole],
    database_url: URL,
    redis_url: str,
    **env: str,
) -> RunningRole:
    running = start_role(
        "api-gateway",
        free_port(),
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        REDIS_URL=redis_url,
        CACHE_NAMESPACE=f"limits-{uuid.uuid4().hex[:8]}",
        JWT_SECRET="e2e-signing-secret-" + "y" * 40,
        **env,
    )
    running.wait_healthy()
    return running


def sign_up(base_url: str) -> str:
    email = f"limits-{uuid.uuid4().hex[:10]}@example.com"
    registered = httpx.post(
        f"{base_url}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "tenant_name": "Limits"},
    )
    assert registered.status_code == 201, registered.text
    return email


def guess(base_url: str, email: str, address: str, password: str = "wrong password 123") -> int:
    response = httpx.post(
        f"{base_url}/api/v1/auth/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": address},
    )
    return response.status_code


def test_a_rotating_forwarded_for_does_not_escape_the_address_limit(
    start_role: Callable[..., RunningRole], database_url: URL, redis_url: str
) -> None:
    running = gateway(
        start_role,
        database_url,
        redis_url,
        RATE_LIMIT_AUTH="6/minute",
        RATE_LIMIT_LOGIN_FAILURES="1000/minute",
    )
    email = sign_up(running.base_url)  # one request of the six
    codes = [guess(running.base_url, email, f"203.0.113.{n}") for n in range(1, 11)]
    assert codes[:5] == [401] * 5
    assert set(codes[5:]) == {429}


def test_failed_sign_ins_are_limited_per_account_from_any_address(
    start_role: Callable[..., RunningRole], database_url: URL, redis_url: str
) -> None:
    # Behind a trusted proxy (loopback here), each forwarded address counts on its own ...
    running = gateway(
        start_role,
        database_url,
        redis_url,
        RATE_LIMIT_AUTH="1000/minute",
        RATE_LIMIT_LOGIN_FAILURES="4/minute",
        TRUSTED_PROXIES="127.0.0.1,::1",
    )
    email, bystander = sign_up(running.base_url), sign_up(running.base_url)
    codes = [guess(running.base_url, email, f"198.51.100.{n}") for n in range(1, 9)]
    # ... but the account allows four failures in all, then 429 even for the right password.
    assert codes[:4] == [401] * 4
    assert set(codes[4:]) == {429}
    assert guess(running.base_url, email, "198.51.100.200", PASSWORD) == 429
    # Another account is not affected.
    assert guess(running.base_url, bystander, "198.51.100.9", PASSWORD) == 200


def test_the_address_limit_counts_the_forwarded_address_behind_a_trusted_proxy(
    start_role: Callable[..., RunningRole], database_url: URL, redis_url: str
) -> None:
    running = gateway(
        start_role,
        database_url,
        redis_url,
        RATE_LIMIT_AUTH="3/minute",
        RATE_LIMIT_LOGIN_FAILURES="1000/minute",
        TRUSTED_PROXIES="127.0.0.1",
    )
    email = "nobody-" + uuid.uuid4().hex[:8] + "@example.com"
    assert [guess(running.base_url, email, "192.0.2.7") for _ in range(4)] == [401] * 3 + [429]
    assert guess(running.base_url, email, "192.0.2.8") == 401
