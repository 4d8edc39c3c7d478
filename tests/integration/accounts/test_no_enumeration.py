"""Whether an email address has an account is told by no answer and by no amount of work:
asking for a password reset or another verification link, or signing in with a wrong
password, runs the same statements for a known and an unknown address (so it takes the same
time; `bench/account_timing.py` prints the times). The account lookup of a link happens in the
email task, which issues the token only for an account."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import DEFAULT_TENANT_ID, AuditEvent, TaskRun
from switchyard.settings import Settings
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT


@pytest.fixture
def settings(make_settings: SettingsFactory, own_broker: str) -> Settings:
    return make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        smtp_host="127.0.0.1",  # email can be sent (no worker here sends it)
        rate_limit_account_email="1000/hour",
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


# The statements of the request under way: tasks it starts inherit the variable; the gateway's
# background work, started before, does not (nor its batch writer of publish marks).
_TRACE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("trace", default=None)


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL that what runs in this context runs until the block ends."""
    seen: list[str] = []
    open_ = [True]

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if _TRACE.get() is seen and open_[0]:
            seen.append(" ".join(statement.split()))

    token = _TRACE.set(seen)
    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        open_[0] = False
        event.remove(Engine, "before_cursor_execute", record)
        _TRACE.reset(token)


async def traced(client: httpx.AsyncClient, path: str, body: dict[str, str]) -> list[str]:
    with statements() as seen:
        answer = await client.post(path, json=body)
    assert answer.status_code in (202, 401), answer.text
    return seen


def unknown_address() -> str:
    return f"nobody-{uuid.uuid4().hex[:10]}@example.com"


@pytest.mark.parametrize(
    "path", ["/api/v1/auth/password-reset", "/api/v1/auth/verify-email/resend"]
)
async def test_asking_for_a_link_does_the_same_work_for_a_known_and_an_unknown_address(
    client: httpx.AsyncClient, engine: AsyncEngine, path: str
) -> None:
    account = await sign_up(client, "Links")
    unknown = unknown_address()
    await traced(client, path, {"email": unknown_address()})  # warm: first-use caches
    known_work = await traced(client, path, {"email": account.email})
    unknown_work = await traced(client, path, {"email": unknown})
    assert known_work == unknown_work
    assert any(statement.startswith("INSERT INTO task_runs") for statement in known_work)
    # Neither request looked the account up or issued a token: the email task does that.
    assert not [s for s in known_work if "FROM users" in s or "user_tokens" in s]
    async with engine.connect() as connection:
        payloads = (
            await connection.scalars(
                select(TaskRun.payload).where(
                    TaskRun.tenant_id == DEFAULT_TENANT_ID, TaskRun.task == "accounts.send_email"
                )
            )
        ).all()
    asked = {payload.get("email") for payload in payloads}
    assert {account.email, unknown} <= asked


async def test_a_wrong_password_does_the_same_work_for_a_known_and_an_unknown_address(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    account = await sign_up(client, "Sign-in")
    unknown = unknown_address()
    path = "/api/v1/auth/login"
    await traced(client, path, {"email": unknown_address(), "password": "not the password!"})
    known_work = await traced(client, path, {"email": account.email, "password": "wrong pass!!"})
    unknown_work = await traced(client, path, {"email": unknown, "password": "wrong pass!!"})
    assert known_work == unknown_work
    assert any(statement.startswith("INSERT INTO audit_events") for statement in known_work), (
        known_work
    )
    # Both failures are audited: in the account's tenant, and (no account) in the platform's.
    async with engine.connect() as connection:
        failures = (
            await connection.execute(
                select(AuditEvent.tenant_id, AuditEvent.target_type, AuditEvent.target_id).where(
                    AuditEvent.action == "auth.sign_in_failed",
                    AuditEvent.target_id.in_([str(account.user_id), unknown]),
                )
            )
        ).all()
    assert sorted(failures, key=str) == sorted(
        [
            (account.tenant_id, "user", str(account.user_id)),
            (DEFAULT_TENANT_ID, "email", unknown),
        ],
        key=str,
    )
