"""Where account email goes: SMTP when configured; the log in development and standalone
without SMTP (said at start); nowhere in production (a 503 naming SMTP_HOST)."""

from __future__ import annotations

import logging

import pytest

from switchyard.errors import ServiceUnavailableError
from switchyard.services import email
from switchyard.services.email import DevelopmentMailbox, LogMailer, SmtpMailer, create_mailer
from switchyard.services.redis import RedisBreaker
from switchyard.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def mailbox() -> DevelopmentMailbox:
    return DevelopmentMailbox(RedisBreaker(None), "unit")  # no Redis: kept by nobody


def test_the_mailer_follows_the_settings() -> None:
    assert isinstance(create_mailer(settings(smtp_host="mail.example.com"), None), SmtpMailer)
    assert isinstance(create_mailer(settings(environment="development"), mailbox()), LogMailer)
    # In test and production, email goes to an SMTP server or nowhere.
    assert create_mailer(settings(environment="test"), None) is None
    assert create_mailer(settings(environment="production"), None) is None
    assert isinstance(
        create_mailer(settings(environment="production", smtp_host="mail.example.com"), None),
        SmtpMailer,
    )


def test_account_links_lead_to_the_console_unless_a_product_names_its_pages() -> None:
    assert settings().account_link_base == "http://127.0.0.1:8000/console"
    assert settings(console_enabled=False).account_link_base == "http://127.0.0.1:8000"
    mine = settings(account_link_base_url="https://app.example.com/account/")
    assert mine.account_link_base == "https://app.example.com/account"


def test_production_without_smtp_refuses_naming_smtp_host() -> None:
    with pytest.raises(ServiceUnavailableError, match="SMTP_HOST"):
        raise email.EmailNotConfiguredError


async def test_without_smtp_development_writes_the_message_with_its_link_to_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configured = settings(environment="development")
    with caplog.at_level(logging.INFO, logger="switchyard.services.email"):
        email.announce(configured)
        message = email.message(
            configured,
            "ada@example.com",
            "Reset",
            "Go to http://x/reset-password?token=abc",
            "password_reset",
        )
        await LogMailer(mailbox()).send(message)
    announced, written, not_kept = caplog.records
    assert "written to the log" in announced.getMessage()
    assert "not kept in the development mailbox" in not_kept.getMessage()  # no Redis here
    assert written.__dict__["to"] == "ada@example.com"
    assert "token=abc" in written.__dict__["body"]


def test_production_says_at_start_that_email_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="switchyard.services.email"):
        email.announce(settings(environment="production"))
    assert "refused (503)" in caplog.text


def test_verification_required_needs_a_way_to_send_it_in_production() -> None:
    problems = settings(
        environment="production", require_email_verification=True
    ).production_problems()
    assert any(problem.startswith("REQUIRE_EMAIL_VERIFICATION") for problem in problems)
    fine = settings(
        environment="production", require_email_verification=True, smtp_host="mail.example.com"
    ).production_problems()
    assert not any(problem.startswith("REQUIRE_EMAIL_VERIFICATION") for problem in fine)
