"""Development without SMTP_HOST (standalone) keeps the email it writes instead of sending in a
mailbox on Redis, shared by the worker that writes and the gateway that shows it
(`GET /api/v1/dev-mailbox`, the console's mailbox page): to callers on this machine only, and
never in test or production, where email goes to an SMTP server or nowhere."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage

import httpx
import pytest

from switchyard.api.app import create_app
from switchyard.services import email
from switchyard.services.email import DevelopmentMailbox, LogMailer
from switchyard.services.redis import RedisBreaker, create_client
from switchyard.settings import Settings
from tests.fixtures.gateway import SettingsFactory, running


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(environment="development", smtp_host=None)


@pytest.fixture
async def mailer(settings: Settings) -> AsyncIterator[LogMailer]:
    """What a worker of this deployment sends account email with: its own Redis client."""
    assert settings.redis_url is not None
    client = create_client(settings, settings.redis_url.get_secret_value())
    try:
        yield LogMailer(DevelopmentMailbox(RedisBreaker(client), settings.cache_namespace))
    finally:
        await client.aclose()


def link_email(settings: Settings, to: str, kind: str, token: str) -> EmailMessage:
    text = f"Follow {settings.account_link_base}/reset-password?token={token}\n\nThanks.\n"
    return email.message(settings, to, f"About {kind}", text, kind)


async def test_the_gateway_shows_what_a_worker_wrote_with_its_link_and_token(
    settings: Settings, mailer: LogMailer
) -> None:
    ada = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    await mailer.send(link_email(settings, ada, "verify_email", "first"))
    await mailer.send(link_email(settings, ada, "password_reset", "second"))
    async with running(create_app(settings)) as client:
        everything = (await client.get("/api/v1/dev-mailbox")).json()["items"]
        mine = [entry for entry in everything if entry["to"] == ada]
        assert [entry["token"] for entry in mine] == ["second", "first"]  # newest first
        assert mine[0]["links"] == ["http://127.0.0.1:8000/console/reset-password?token=second"]
        assert mine[0]["kind"] == "password_reset"
        assert "Thanks." in mine[0]["text"]

        chosen = await client.get(
            "/api/v1/dev-mailbox", params={"to": ada.upper(), "kind": "verify_email"}
        )
        assert [entry["token"] for entry in chosen.json()["items"]] == ["first"]
        assert (await client.get("/api/v1/dev-mailbox", params={"kind": "nope"})).status_code == 422


async def test_a_wait_answers_when_the_message_arrives_or_empty_at_its_end(
    settings: Settings, mailer: LogMailer
) -> None:
    bob = f"bob-{uuid.uuid4().hex[:8]}@example.com"
    async with running(create_app(settings)) as client:
        started = time.monotonic()
        empty = await client.get("/api/v1/dev-mailbox", params={"to": bob, "wait": 0.3})
        assert empty.json() == {"items": []}
        assert time.monotonic() - started >= 0.3

        async def later() -> None:
            await asyncio.sleep(0.3)
            await mailer.send(link_email(settings, bob, "invitation", "late"))

        sending = asyncio.create_task(later())
        waited = await client.get(
            "/api/v1/dev-mailbox", params={"to": bob, "kind": "invitation", "wait": 20}
        )
        await sending
        assert [entry["token"] for entry in waited.json()["items"]] == ["late"]


async def test_only_callers_on_this_machine_see_it(settings: Settings, mailer: LogMailer) -> None:
    await mailer.send(link_email(settings, "carol@example.com", "password_reset", "secret"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as far:
            answer = await far.get("/api/v1/dev-mailbox")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert "loopback" in answer.json()["detail"]
    assert "secret" not in answer.text


async def test_there_is_none_where_email_is_sent_or_refused(
    make_settings: SettingsFactory,
) -> None:
    """Test and production (whose mailer is SMTP or none: tests/unit/services/test_email.py)."""
    async with running(create_app(make_settings(environment="test"))) as client:
        answer = await client.get("/api/v1/dev-mailbox")
    assert answer.status_code == 404
    assert "development" in answer.json()["detail"]
