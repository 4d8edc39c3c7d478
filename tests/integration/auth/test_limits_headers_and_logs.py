from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from switchyard.api.app import create_app
from switchyard.services.ratelimit import RateLimiter
from tests.fixtures.accounts import PASSWORD, sign_up
from tests.fixtures.gateway import SettingsFactory, running


async def test_login_is_limited_per_client_with_retry_after(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        rate_limit_auth="3/minute", cache_namespace=f"rl-{uuid.uuid4().hex[:6]}"
    )
    async with running(create_app(settings)) as client:
        body = {"email": "nobody@example.com", "password": "wrong password!!"}
        answers = [await client.post("/api/v1/auth/login", json=body) for _ in range(4)]
        health = [await client.get("/health/live") for _ in range(10)]
    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    limited = answers[-1]
    assert limited.headers["content-type"] == "application/problem+json"
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert limited.json()["code"] == "rate_limited"
    assert {answer.status_code for answer in health} == {200}


async def test_api_calls_are_limited_per_caller(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit_api="3/minute")
    async with running(create_app(settings)) as client:
        first, second = await sign_up(client), await sign_up(client)
        mine = [
            (await client.get("/api/v1/auth/me", headers=first.headers)).status_code
            for _ in range(4)
        ]
        theirs = await client.get("/api/v1/auth/me", headers=second.headers)
    assert mine == [200, 200, 200, 429]
    assert theirs.status_code == 200


async def test_task_runs_are_limited_per_tenant(
    make_settings: SettingsFactory, broker_url: str
) -> None:
    settings = make_settings(
        rate_limit_task_runs="2/minute", celery_broker_url=broker_url, task_delivery_limit=2
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        answers = [
            await client.post(
                "/api/v1/tasks/run",
                json={"task": "system.echo", "payload": {"message": 1}},
                headers=account.headers,
            )
            for _ in range(3)
        ]
    # 422 (the payload is wrong) counts as a run attempt, but is answered before any publish.
    assert [answer.status_code for answer in answers] == [422, 422, 429]


async def test_limits_fall_back_to_the_process_when_redis_is_down() -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0")
    decisions = [await limiter.hit("2/minute", "fallback", "k") for _ in range(3)]
    assert [decision.allowed for decision in decisions] == [True, True, False]
    assert decisions[-1].retry_after >= 1


async def test_security_headers_and_no_server_banner(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "server" not in response.headers
    missing = await client.get("/nothing")
    assert missing.headers["x-content-type-options"] == "nosniff"


async def test_a_full_auth_flow_logs_no_secret(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    with caplog.at_level(logging.DEBUG):
        async with running(create_app(settings)) as client:
            account = await sign_up(client)
            refreshed = await client.post(
                "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
            )
            created = await client.post(
                "/api/v1/api-keys",
                json={"name": "k", "scopes": ["tasks:read"]},
                headers=account.headers,
            )
            key = created.json()["key"]
            await client.get("/api/v1/tasks/", headers={"X-API-Key": key})
            await client.post(
                "/api/v1/auth/login", json={"email": account.email, "password": "wrong-" + PASSWORD}
            )
    secrets = [
        PASSWORD,
        account.access_token,
        account.refresh_token,
        refreshed.json()["access_token"],
        refreshed.json()["refresh_token"],
        key,
        settings.signing_secret(),
    ]
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert caplog.records, "the flow logged nothing at all"
    assert [secret for secret in secrets if secret in logged] == []
