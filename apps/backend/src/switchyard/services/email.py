"""Sending email: through the SMTP server of the settings (aiosmtplib), or, in development and
standalone without SMTP_HOST, into the log (the message whole, links included, so that a
developer can follow them). Production without SMTP_HOST has no mailer: what would send email
is refused with a 503 naming SMTP_HOST."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from switchyard.errors import ServiceUnavailableError
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

EMAIL_NOT_CONFIGURED = "Email is not configured (SMTP_HOST); nothing was sent."


class EmailNotConfiguredError(ServiceUnavailableError):
    def __init__(self) -> None:
        super().__init__(EMAIL_NOT_CONFIGURED)


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


def message(settings: Settings, to: str, subject: str, text: str) -> EmailMessage:
    composed = EmailMessage()
    composed["From"] = settings.smtp_from
    composed["To"] = to
    composed["Subject"] = subject
    composed.set_content(text)
    return composed


class SmtpMailer:
    """One connection per message: account email is rare, and a pooled connection would only
    go stale between messages."""

    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host is not None
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_user,
            password=password,
            use_tls=settings.smtp_tls == "tls",
            start_tls=settings.smtp_tls == "starttls",
            timeout=settings.smtp_timeout_seconds,
        )


class LogMailer:
    """Development and standalone without SMTP: each message is a log line, links and all."""

    async def send(self, message: EmailMessage) -> None:
        body = message.get_content() if not message.is_multipart() else str(message)
        logger.warning(
            "email written to the log (SMTP_HOST is unset), not sent",
            extra={"to": message["To"], "subject": message["Subject"], "body": body},
        )


def create_mailer(settings: Settings) -> Mailer | None:
    if settings.smtp_host is not None:
        return SmtpMailer(settings)
    if settings.email_logged:
        return LogMailer()
    return None


def announce(settings: Settings) -> None:
    """Said once at a role's start: where email goes."""
    if settings.smtp_host is not None:
        logger.info(
            "email is sent through SMTP",
            extra={"smtp_host": settings.smtp_host, "smtp_port": settings.smtp_port},
        )
    elif settings.email_logged:
        logger.warning(
            "SMTP_HOST is unset: email (invitations, password resets, verification links) is "
            "written to the log, not sent"
        )
    else:
        logger.warning("SMTP_HOST is unset: invitations and password resets are refused (503)")
