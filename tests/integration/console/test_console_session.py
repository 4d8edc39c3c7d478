"""The console's cookie session against the real gateway app and database: how the cookie is
set, that /api/v1 accepts it with the user's scopes and tenant, that every state-changing
request needs the session's CSRF token and this origin, sign-out, expiry, and the tenant
switcher."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.auth.security import CONSOLE_COOKIE
from switchyard.settings import Settings
from tests.fixtures.accounts import PASSWORD, Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running

ORIGIN = "http://testserver"


@pytest.fixture
def settings(task_settings: Settings) -> Settings:
    """With the session's broker, declaring its queues as every process of the session does."""
    return task_settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


async def console_sign_in(
    client: httpx.AsyncClient, account: Account, **extra: str
) -> tuple[dict[str, str], dict[str, object]]:
    """(the headers a console page sends: its cookie and CSRF token, the session's view)."""
    answer = await client.post(
        "/console/session",
        json={"email": account.email, "password": PASSWORD, **extra},
        headers={"Origin": ORIGIN},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return {"Cookie": cookie_of(answer), "X-CSRF-Token": body["csrf_token"]}, body


def cookie_of(answer: httpx.Response) -> str:
    jar = SimpleCookie(answer.headers["set-cookie"])
    return f"{CONSOLE_COOKIE}={jar[CONSOLE_COOKIE].value}"


async def test_sign_in_sets_an_http_only_lax_cookie_secure_outside_development(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    account = await sign_up(client)
    answer = await client.post(
        "/console/session", json={"email": account.email, "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    morsel = SimpleCookie(answer.headers["set-cookie"])[CONSOLE_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["secure"] is True  # ENVIRONMENT=test
    assert morsel["path"] == "/"
    assert int(morsel["max-age"]) == 8 * 3600
    body = answer.json()
    assert body["email"] == account.email
    assert body["tenant"]["id"] == str(account.tenant_id)
    assert body["role"] == "owner"
    assert len(body["csrf_token"]) >= 40
    assert morsel.value not in answer.text  # the token is in the cookie alone

    async with running(create_app(make_settings(environment="development"))) as dev:
        other = await sign_up(dev)
        relaxed = await dev.post(
            "/console/session", json={"email": other.email, "password": PASSWORD}
        )
        assert SimpleCookie(relaxed.headers["set-cookie"])[CONSOLE_COOKIE]["secure"] == ""


async def test_the_cookie_reads_the_api_with_the_users_scopes_and_tenant(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    headers, _ = await console_sign_in(client, account)
    me = await client.get("/api/v1/auth/me", headers={"Cookie": headers["Cookie"]})
    assert me.status_code == 200, me.text
    assert me.json()["tenant"]["id"] == str(account.tenant_id)
    assert me.json()["kind"] == "user"
    runs = await client.get("/api/v1/tasks/", headers={"Cookie": headers["Cookie"]})
    assert runs.status_code == 200
    assert runs.json()["items"] == []


async def test_a_change_needs_the_csrf_token_and_this_origin(client: httpx.AsyncClient) -> None:
    account = await sign_up(client)
    headers, _ = await console_sign_in(client, account)
    body = {"task": "system.echo", "payload": {"message": "from the console"}}
    cookie_only = {"Cookie": headers["Cookie"]}
    refused = await client.post("/api/v1/tasks/run", json=body, headers=cookie_only)
    assert refused.status_code == 403
    assert "X-CSRF-Token" in refused.json()["detail"]
    wrong = {**cookie_only, "X-CSRF-Token": headers["X-CSRF-Token"][:-2] + "xx"}
    assert (await client.post("/api/v1/tasks/run", json=body, headers=wrong)).status_code == 403
    foreign = {**headers, "Origin": "http://evil.example"}
    crossed = await client.post("/api/v1/tasks/run", json=body, headers=foreign)
    assert crossed.status_code == 403
    assert "own pages" in crossed.json()["detail"]
    # A form post from another origin: no header it could set, and its Origin is refused.
    form = await client.post(
        "/api/v1/tasks/run",
        data={"task": "system.echo"},
        headers={**cookie_only, "Origin": "http://127.0.0.1:9999"},
    )
    assert form.status_code == 403
    runs = await client.get("/api/v1/tasks/", headers=cookie_only)
    assert runs.json()["items"] == []  # nothing of the refused requests ran

    accepted = await client.post(
        "/api/v1/tasks/run", json=body, headers={**headers, "Origin": ORIGIN}
    )
    assert accepted.status_code == 202, accepted.text
    listed = (await client.get("/api/v1/tasks/", headers=cookie_only)).json()["items"]
    assert [run["task_id"] for run in listed] == [accepted.json()["task_id"]]


async def test_the_session_token_is_no_bearer_token_and_a_bearer_token_no_cookie(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    headers, _ = await console_sign_in(client, account)
    session_token = headers["Cookie"].partition("=")[2]
    as_bearer = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {session_token}"}
    )
    assert as_bearer.status_code == 401
    as_cookie = await client.get(
        "/api/v1/auth/me", headers={"Cookie": f"{CONSOLE_COOKIE}={account.access_token}"}
    )
    assert as_cookie.status_code == 401
    # Bearer callers never need a CSRF token (no browser sends their header by itself).
    ran = await client.post(
        "/api/v1/tasks/run",
        json={"task": "system.echo", "payload": {"message": "x"}},
        headers=account.headers,
    )
    assert ran.status_code == 202


async def test_sign_out_ends_the_session_everywhere(client: httpx.AsyncClient) -> None:
    account = await sign_up(client)
    headers, _ = await console_sign_in(client, account)
    out = await client.delete("/console/session", headers={**headers, "Origin": ORIGIN})
    assert out.status_code == 204
    assert f'{CONSOLE_COOKIE}=""' in out.headers["set-cookie"]
    # A copy of the cookie kept elsewhere is refused too.
    again = await client.get("/api/v1/auth/me", headers={"Cookie": headers["Cookie"]})
    assert again.status_code == 401
    assert (await client.get("/console/session", headers=headers)).status_code == 401


async def test_an_expired_session_is_refused(client: httpx.AsyncClient, settings: Settings) -> None:
    account = await sign_up(client)
    headers, _ = await console_sign_in(client, account)
    claims = jwt.decode(
        headers["Cookie"].partition("=")[2],
        settings.signing_secret(),
        algorithms=[settings.jwt_algorithm],
        audience=settings.jwt_audience,
    )
    claims["exp"] = datetime.now(UTC) - timedelta(seconds=1)
    expired = jwt.encode(claims, settings.signing_secret(), settings.jwt_algorithm)
    answer = await client.get("/api/v1/auth/me", headers={"Cookie": f"{CONSOLE_COOKIE}={expired}"})
    assert answer.status_code == 401


async def test_sign_in_is_refused_from_another_origin_or_as_a_form(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    crossed = await client.post(
        "/console/session",
        json={"email": account.email, "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
    )
    assert crossed.status_code == 403
    assert "set-cookie" not in crossed.headers
    form = await client.post(
        "/console/session", data={"email": account.email, "password": PASSWORD}
    )
    assert form.status_code == 422
    wrong = await client.post(
        "/console/session", json={"email": account.email, "password": "not the password"}
    )
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers


async def test_the_tenant_switcher_moves_the_session_to_another_membership(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await sign_up(client, "First")
    second = await sign_up(client, "Second")
    stranger = await sign_up(client, "Stranger")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO memberships (id, user_id, tenant_id, role) "
                "VALUES (:id, :user, :tenant, 'member')"
            ),
            {"id": uuid.uuid4(), "user": first.user_id, "tenant": second.tenant_id},
        )
        rows = await connection.execute(text("SELECT id, slug FROM tenants"))
        slugs = {row.id: row.slug for row in rows}
    headers, view = await console_sign_in(client, first, tenant=slugs[first.tenant_id])
    assert {m["tenant"]["slug"] for m in view["memberships"]} == {  # type: ignore[attr-defined]
        slugs[first.tenant_id],
        slugs[second.tenant_id],
    }
    switched = await client.post(
        "/console/session/tenant",
        json={"tenant": slugs[second.tenant_id]},
        headers={**headers, "Origin": ORIGIN},
    )
    assert switched.status_code == 200, switched.text
    assert switched.json()["tenant"]["id"] == str(second.tenant_id)
    assert switched.json()["role"] == "member"
    cookie = cookie_of(switched)
    me = (await client.get("/api/v1/auth/me", headers={"Cookie": cookie})).json()
    assert me["tenant"]["id"] == str(second.tenant_id)
    assert me["role"] == "member"
    assert "tasks:admin" not in me["scopes"]
    # The session it replaced has ended.
    assert (await client.get("/api/v1/auth/me", headers=headers)).status_code == 401
    # Not a member of the stranger's tenant: as if it did not exist.
    new_headers = {"Cookie": cookie, "X-CSRF-Token": switched.json()["csrf_token"]}
    refused = await client.post(
        "/console/session/tenant",
        json={"tenant": slugs[stranger.tenant_id]},
        headers={**new_headers, "Origin": ORIGIN},
    )
    assert refused.status_code == 404


async def test_the_console_pages_are_served_under_a_strict_policy_and_can_be_turned_off(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    page = await client.get("/console/runs")
    assert page.status_code == 200
    assert "/console/assets/console.js" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    script = await client.get("/console/assets/console.js")
    assert script.status_code == 200
    assert "X-CSRF-Token" in script.text

    async with running(create_app(make_settings(console_enabled=False))) as off:
        account = await sign_up(off)
        assert (await off.get("/console/runs")).status_code == 404
        signed = await off.post(
            "/console/session", json={"email": account.email, "password": PASSWORD}
        )
        assert signed.status_code == 404
