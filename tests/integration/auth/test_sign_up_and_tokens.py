from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.settings import Settings
from tests.fixtures.accounts import PASSWORD, Account, login, sign_up
from tests.fixtures.gateway import SettingsFactory, running


@pytest.fixture
def auth_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
async def client(auth_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(auth_settings)) as client:
        yield client


async def test_sign_up_creates_a_tenant_and_its_owner(client: httpx.AsyncClient) -> None:
    email = f"Founder-{uuid.uuid4().hex[:6]}@Example.com"
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "tenant_name": "Rocket Labs!"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == email.lower()
    assert body["role"] == "owner"
    assert body["tenant"]["slug"].startswith("rocket-labs")
    assert body["tenant"]["status"] == "active"
    assert "password" not in response.text

    tokens = await login(client, email.upper())
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["tenant"]["id"] == body["tenant"]["id"]
    assert me.json()["role"] == "owner"
    assert "tasks:admin" in me.json()["scopes"]
    assert me.json()["kind"] == "user"


@pytest.mark.parametrize("password", ["short", "x" * 129])
async def test_password_length_is_bounded(client: httpx.AsyncClient, password: str) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "a@example.com", "password": password, "tenant_name": "T"},
    )
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["body.password"]


async def test_sign_up_twice_with_one_email_is_409(client: httpx.AsyncClient) -> None:
    account = await sign_up(client)
    again = await client.post(
        "/api/v1/auth/register",
        json={"email": account.email, "password": PASSWORD, "tenant_name": "Other"},
    )
    assert again.status_code == 409


async def test_login_failure_does_not_tell_whether_the_email_exists(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    wrong_password = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": "not the password!"}
    )
    unknown_email = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "not the password!"}
    )
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json()["detail"] == unknown_email.json()["detail"]
    assert wrong_password.headers["www-authenticate"] == "Bearer"


async def test_login_takes_the_oauth2_password_form(client: httpx.AsyncClient) -> None:
    account = await sign_up(client)
    response = await client.post(
        "/api/v1/auth/login", data={"username": account.email, "password": PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"
    spec = (await client.get("/openapi.json")).json()
    flows = spec["components"]["securitySchemes"]["OAuth2"]["flows"]
    assert flows["password"]["tokenUrl"] == "/api/v1/auth/login"
    assert flows["clientCredentials"]["tokenUrl"] == "/api/v1/oauth/token"
    assert "tasks:run" in flows["clientCredentials"]["scopes"]


async def test_malformed_login_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/login", json={"email": "not-an-email"})
    assert response.status_code == 422
    assert {error["field"] for error in response.json()["errors"]} == {
        "body.email",
        "body.password",
    }


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client)
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200
    rotated = first.json()["refresh_token"]
    assert rotated != account.refresh_token
    second = await client.post("/api/v1/auth/refresh", json={"refresh_token": rotated})
    assert second.status_code == 200
    newest = second.json()["refresh_token"]

    reused = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert reused.status_code == 401
    # The reuse revoked the whole family, so the newest token is dead too.
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": newest})
    assert after.status_code == 401


async def test_logout_revokes_the_refresh_token(client: httpx.AsyncClient) -> None:
    account = await sign_up(client)
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert out.status_code == 204
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert again.status_code == 401


@pytest.mark.parametrize(
    "token",
    ["garbage", "6f1d1c3e-5a55-4f4e-9d7a-0b8d2c1e9f00.wrong-secret", ""],
    ids=["garbage", "unknown-id", "empty"],
)
async def test_unknown_refresh_tokens_are_401(client: httpx.AsyncClient, token: str) -> None:
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": token or "x"})
    assert response.status_code == 401


def forged(settings: Settings, account: Account, **changes: object) -> str:
    claims: dict[str, object] = {
        "sub": str(account.user_id),
        "tid": str(account.tenant_id),
        "role": "owner",
        "su": True,
        "typ": "access",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": datetime.now(UTC),
        "exp": datetime.now(UTC) + timedelta(minutes=5),
    }
    key = changes.pop("key", settings.signing_secret())
    algorithm = str(changes.pop("alg", "HS256"))
    claims.update(changes)
    secret: Any = key if algorithm != "none" else None
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.mark.parametrize(
    "change",
    [
        {"key": "another-secret-that-is-long-enough-1234"},
        {"alg": "none"},
        {"alg": "HS512"},
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"exp": datetime.now(UTC) - timedelta(seconds=1)},
        {"typ": "refresh"},
    ],
)
async def test_tampered_tokens_are_401(
    client: httpx.AsyncClient, auth_settings: Settings, change: dict[str, object]
) -> None:
    account = await sign_up(client)
    token = forged(auth_settings, account, **change)
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_correctly_signed_token_is_accepted(
    client: httpx.AsyncClient, auth_settings: Settings, engine: AsyncEngine
) -> None:
    account = await sign_up(client)
    async with engine.connect() as connection:
        family = await connection.scalar(
            text("SELECT family_id FROM refresh_tokens WHERE user_id = :user"),
            {"user": account.user_id},
        )
    token = forged(auth_settings, account, su=False, fam=str(family))
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_no_credentials_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tasks/")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_without_jwt_secret_tokens_signed_with_the_old_default_are_refused(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(jwt_secret=None, var_dir=tmp_path)
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        me = await client.get("/api/v1/auth/me", headers=account.headers)
        assert me.status_code == 200
        token = forged(settings, account, key="changethis", su=False)
        refused = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401
    assert (tmp_path / "jwt.secret").read_text() == settings.signing_secret()
