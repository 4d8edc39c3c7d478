"""Sending email: through the SMTP server of the settings (aiosmtplib), or, in development and
standalone without SMTP_HOST, into the log and the development mailbox (the message whole,
links included, so that a developer can follow them: `GET /api/v1/dev-mailbox`, the console's
mailbox page). Production without SMTP_HOST has no mailer: what would send email is refused
with a 503 naming SMTP_HOST."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import aiosmtplib
from redis.asyncio import Redis
from redis.exceptions import RedisError

from switchyard.errors import ServiceUnavailableError
from switchyard.services.redis import UNREACHABLE, RedisBreaker
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

EMAIL_NOT_CONFIGURED = "Email is not configured (SMTP_HOST); nothing was sent."
# What a message is for (`invitation`, `password_reset`, `verify_email`): the mailbox's filter.
KIND_HEADER = "X-Switchyard-Email"
MAILBOX_KEEP = 100  # newest messages the development mailbox keeps
MAILBOX_TTL_SECONDS = 7 * 24 * 3600
LINK = re.compile(r"https?://[^\s<>\"']+")


class EmailNotConfiguredError(ServiceUnavailableError):
    def __init__(self) -> None:
        super().__init__(EMAIL_NOT_CONFIGURED)


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


def message(settings: Settings, to: str, subject: str, text: str, kind: str) -> EmailMessage:
    composed = EmailMessage()
    composed["From"] = settings.smtp_from
    composed["To"] = to
    composed["Subject"] = subject
    composed[KIND_HEADER] = kind
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


class DevelopmentMailbox:
    """The messages development wrote instead of sending, newest first, on Redis (so that
    every process of a deployment, standalone's worker and gateway, shares them): the last
    MAILBOX_KEEP for MAILBOX_TTL_SECONDS. Best effort: the log holds every message anyway."""

    def __init__(self, breaker: RedisBreaker, namespace: str) -> None:
        self.breaker = breaker
        self.key = f"{namespace}:dev-mailbox"

    async def add(self, message: EmailMessage) -> None:
        text = message.get_content() if not message.is_multipart() else str(message)
        links = LINK.findall(text)
        entry = {
            "id": str(uuid.uuid4()),
            "to": str(message["To"]),
            "subject": str(message["Subject"]),
            "kind": message[KIND_HEADER],
            "text": text,
            "links": links,
            # The link's token, so a script (the README's) need not parse the link.
            "token": next(iter(parse_qs(urlsplit(links[0]).query).get("token", [])), None)
            if links
            else None,
            "written_at": datetime.now(UTC).isoformat(),
        }

        async def push(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.lpush(self.key, json.dumps(entry))
                pipe.ltrim(self.key, 0, MAILBOX_KEEP - 1)
                pipe.expire(self.key, MAILBOX_TTL_SECONDS)
                await pipe.execute()

        try:
            await self.breaker.call(push)
        except (*UNREACHABLE, RedisError) as exc:
            logger.warning("email not kept in the development mailbox", extra={"error": repr(exc)})

    async def messages(self) -> list[dict[str, Any]]:
        """Newest first; empty while Redis is away."""

        async def read(client: Redis) -> list[bytes | str]:
            return await client.lrange(self.key, 0, MAILBOX_KEEP - 1)

        try:
            rows = await self.breaker.call(read)
        except (*UNREACHABLE, RedisError):
            return []
        return [json.loads(row) for row in rows]


class LogMailer:
    """Development and standalone without SMTP: each message is a log line, links and all, and
    an entry of the development mailbox."""

    def __init__(self, mailbox: DevelopmentMailbox) -> None:
        self.mailbox = mailbox

    async def send(self, message: EmailMessage) -> None:
        body = message.get_content() if not message.is_multipart() else str(message)
        logger.warning(
            "email written to the log (SMTP_HOST is unset), not sent",
            extra={"to": message["To"], "subject": message["Subject"], "body": body},
        )
        await self.mailbox.add(message)


def create_mailer(settings: Settings, mailbox: DevelopmentMailbox | None) -> Mailer | None:
    if settings.smtp_host is not None:
        return SmtpMailer(settings)
    if mailbox is not None:
        return LogMailer(mailbox)
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
            "written to the log and the development mailbox (/console/mailbox), not sent"
        )
    else:
        logger.warning("SMTP_HOST is unset: invitations and password resets are refused (503)")
