"""Account email requests are limited per address whatever the address's fate, and need a
broker; invitations answer alike whether or not the invitee has an account."""

from __future__ import annotations

import uuid

import httpx

from switchyard.api.app import create_app
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.mail import Mailbox


async def test_reset_requests_are_limited_per_email_address_known_or_not(
    make_settings: SettingsFactory, own_broker: str, mailbox: Mailbox
) -> None:
    settings = make_settings(
        celery_broker_url=own_broker, rate_limit_account_email="2/hour", **mailbox.settings
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client, "Limited")
        unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
        for email in (account.email, unknown):
            answers = [
                (await client.post("/api/v1/auth/password-reset", json={"email": email}))
                for _ in range(3)
            ]
            assert [answer.status_code for answer in answers] == [202, 202, 429], email
            assert answers[2].headers["retry-after"]
            assert answers[2].headers["content-type"] == "application/problem+json"
        # Another address is not held up by them.
        other = await client.post("/api/v1/auth/password-reset", json={"email": f"x{unknown}"})
        assert other.status_code == 202


async def test_without_a_broker_or_smtp_account_email_is_refused_naming_the_setting(
    make_settings: SettingsFactory, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    """Refused, not accepted and lost: no run is recorded."""
    async with running(create_app(make_settings(**mailbox.settings))) as no_broker:
        account = await sign_up(no_broker, "No broker")
        refused = await no_broker.post("/api/v1/auth/password-reset", json={"email": account.email})
        assert refused.status_code == 503
        assert "CELERY_BROKER_URL" in refused.json()["detail"]
        invited = await no_broker.post(
            "/api/v1/invitations", json={"email": "x@example.com"}, headers=account.headers
        )
        assert invited.status_code == 503
    # ENVIRONMENT=test without SMTP_HOST: no mailer (only development writes email to the log).
    owner = await sign_up(client, "No SMTP")
    no_smtp = await client.post(
        "/api/v1/invitations", json={"email": "x@example.com"}, headers=owner.headers
    )
    assert no_smtp.status_code == 503
    assert "SMTP_HOST" in no_smtp.json()["detail"]


async def test_an_invitation_answers_alike_whether_or_not_the_address_has_an_account(
    make_settings: SettingsFactory, own_broker: str, mailbox: Mailbox
) -> None:
    settings = make_settings(celery_broker_url=own_broker, **mailbox.settings)
    async with running(create_app(settings)) as api_client:
        await _invite_both(api_client)


async def _invite_both(api_client: httpx.AsyncClient) -> None:
    owner = await sign_up(api_client, "Discreet")
    existing = await sign_up(api_client, "Elsewhere")
    answers = [
        await api_client.post(
            "/api/v1/invitations", json={"email": email, "role": "member"}, headers=owner.headers
        )
        for email in (existing.email, f"new-{uuid.uuid4().hex[:8]}@example.com")
    ]
    assert [answer.status_code for answer in answers] == [201, 201]
    first, second = (answer.json() for answer in answers)
    assert first.keys() == second.keys()
    for field in ("status", "role", "sent_count", "accepted_at", "revoked_at"):
        assert first[field] == second[field]
    assert first["status"] == "pending"
