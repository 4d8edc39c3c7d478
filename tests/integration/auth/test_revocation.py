"""What a credential may do is read from the database at every request: rotation races, logout,
revoked families, changed roles, removed members and deactivated key creators."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.settings import Settings
from tests.fixtures.accounts import Account, login, sign_up
from tests.fixtures.gateway import SettingsFactory, running


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sql(engine: AsyncEngine, statement: str, **values: object) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(statement), values)


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_a_double_submitted_refresh_gets_one_successor_and_keeps_the_sign_in(
    client: httpx.AsyncClient,
) -> None:
    """Ten refreshes at once with one token (a client's tabs, a retry after a lost answer):
    one spends it, the others get the same successor, and nobody is signed out."""
    account = await sign_up(client)
    for _ in range(3):
        tokens = await login(client, account.email)
        answers = await asyncio.gather(
            *(refresh(client, tokens["refresh_token"]) for _ in range(10))
        )
        assert [answer.status_code for answer in answers] == [200] * 10, [
            answer.text for answer in answers if answer.status_code != 200
        ]
        successors = {answer.json()["refresh_token"] for answer in answers}
        assert len(successors) == 1
        assert successors != {tokens["refresh_token"]}
        for answer in answers:  # every access token handed out works
            me = await client.get("/api/v1/auth/me", headers=bearer(answer.json()["access_token"]))
            assert me.status_code == 200
        # The successor rotates as usual, and the sign-in goes on.
        onwards = await refresh(client, successors.pop())
        assert onwards.status_code == 200
        me = await client.get("/api/v1/auth/me", headers=bearer(onwards.json()["access_token"]))
        assert me.status_code == 200


async def test_a_spent_refresh_token_replayed_after_the_window_revokes_the_family(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    account = await sign_up(client)
    rotated = (await refresh(client, account.refresh_token)).json()
    spent_id = account.refresh_token.partition(".")[0]
    await sql(
        engine,
        "UPDATE refresh_tokens SET used_at = used_at - make_interval(secs => :age) WHERE id = :id",
        age=settings.refresh_reuse_seconds + 1,
        id=uuid.UUID(spent_id),
    )
    replayed = await refresh(client, account.refresh_token)
    assert replayed.status_code == 401
    assert "already used" in replayed.json()["detail"]
    original = {"refresh_token": account.refresh_token, "access_token": account.access_token}
    for pair in (rotated, original):
        assert (await refresh(client, pair["refresh_token"])).status_code == 401
        me = await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        assert me.status_code == 401


async def test_a_spent_refresh_token_replayed_after_its_successor_was_used_revokes_the_family(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    first = (await refresh(client, account.refresh_token)).json()
    second = (await refresh(client, first["refresh_token"])).json()  # the client moved on
    replayed = await refresh(client, account.refresh_token)  # within the window, but late
    assert replayed.status_code == 401
    for pair in (first, second):
        me = await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        assert me.status_code == 401
    assert (await refresh(client, second["refresh_token"])).status_code == 401


async def test_access_tokens_stop_working_after_logout(client: httpx.AsyncClient) -> None:
    account = await sign_up(client)
    other_sign_in = await login(client, account.email)
    assert (await client.get("/api/v1/auth/me", headers=account.headers)).status_code == 200
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert out.status_code == 204
    after = await client.get("/api/v1/auth/me", headers=account.headers)
    assert after.status_code == 401
    assert after.headers["content-type"] == "application/problem+json"
    # Only that sign-in ended: another one of the same user goes on.
    other = await client.get("/api/v1/auth/me", headers=bearer(other_sign_in["access_token"]))
    assert other.status_code == 200


async def test_access_tokens_of_a_family_revoked_by_reuse_stop_working(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    rotated = (await refresh(client, account.refresh_token)).json()
    assert (await client.get("/api/v1/auth/me", headers=account.headers)).status_code == 200
    assert (await refresh(client, rotated["refresh_token"])).status_code == 200
    reused = await refresh(client, account.refresh_token)
    assert reused.status_code == 401
    for token in (account.access_token, rotated["access_token"]):
        assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 401


async def test_a_demoted_admin_loses_admin_rights_at_the_next_request(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    account = await sign_up(client)
    assert (await client.get("/api/v1/api-keys", headers=account.headers)).status_code == 200
    await sql(
        engine,
        "UPDATE memberships SET role = 'member' WHERE user_id = :user",
        user=account.user_id,
    )
    denied = await client.get("/api/v1/api-keys", headers=account.headers)
    assert denied.status_code == 403
    me = (await client.get("/api/v1/auth/me", headers=account.headers)).json()
    assert me["role"] == "member"
    assert "tasks:admin" not in me["scopes"]


async def test_a_removed_member_loses_access_at_the_next_request(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    account = await sign_up(client)
    await sql(engine, "DELETE FROM memberships WHERE user_id = :user", user=account.user_id)
    assert (await client.get("/api/v1/tasks/", headers=account.headers)).status_code == 401


async def test_a_signed_token_with_an_unknown_role_is_read_with_the_stored_role(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    account = await sign_up(client)
    async with engine.connect() as connection:
        family = await connection.scalar(
            text("SELECT family_id FROM refresh_tokens WHERE user_id = :user"),
            {"user": account.user_id},
        )
    now = datetime.now(UTC)
    claims = {
        "sub": str(account.user_id),
        "tid": str(account.tenant_id),
        "role": "emperor",
        "su": True,
        "fam": str(family),
        "typ": "access",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    token = jwt.encode(claims, settings.signing_secret(), algorithm="HS256")
    me = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert (me.json()["role"], me.json()["is_superuser"]) == ("owner", False)
    # Without the family claim the token cannot be revoked, so it is not accepted.
    del claims["fam"]
    unrevocable = jwt.encode(claims, settings.signing_secret(), algorithm="HS256")
    assert (await client.get("/api/v1/auth/me", headers=bearer(unrevocable))).status_code == 401


async def _key(client: httpx.AsyncClient, owner: Account) -> str:
    created = await client.post(
        "/api/v1/api-keys",
        json={"name": "ci", "scopes": ["tasks:read", "tasks:admin"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


async def _client_token(client: httpx.AsyncClient, owner: Account) -> str:
    created = await client.post(
        "/api/v1/oauth-clients",
        json={"name": "etl", "scopes": ["tasks:read"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    granted = await client.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(created.json()["client_id"], created.json()["client_secret"]),
    )
    assert granted.status_code == 200, granted.text
    return str(granted.json()["access_token"])


async def test_keys_and_client_tokens_stop_working_when_their_creator_is_deactivated(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await sign_up(client)
    key = {"X-API-Key": await _key(client, owner)}
    token = bearer(await _client_token(client, owner))
    assert (await client.get("/api/v1/tasks/", headers=key)).status_code == 200
    assert (await client.get("/api/v1/tasks/", headers=token)).status_code == 200
    await sql(engine, "UPDATE users SET is_active = false WHERE id = :user", user=owner.user_id)
    assert (await client.get("/api/v1/tasks/", headers=key)).status_code == 401
    assert (await client.get("/api/v1/tasks/", headers=token)).status_code == 401


async def test_a_keys_scopes_shrink_with_its_creators_role(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await sign_up(client)
    key = await _key(client, owner)
    await sql(
        engine, "UPDATE memberships SET role = 'member' WHERE user_id = :user", user=owner.user_id
    )
    me = (await client.get("/api/v1/auth/me", headers={"X-API-Key": key})).json()
    assert me["scopes"] == ["tasks:read"]
    letters = await client.get("/api/v1/tasks/dead-letters", headers={"X-API-Key": key})
    assert letters.status_code == 200
    purge = await client.delete(
        f"/api/v1/tasks/dead-letters/{uuid.uuid4()}", headers={"X-API-Key": key}
    )
    assert purge.status_code == 403
    assert "tasks:admin" in purge.json()["detail"]
