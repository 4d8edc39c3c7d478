from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.auth.service import ensure_superuser
from switchyard.settings import Settings
from tests.fixtures.accounts import Account, login, sign_up
from tests.fixtures.gateway import SettingsFactory, running

SUPERUSER_PASSWORD = "platform-superuser-password-1"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(
        first_superuser_email=f"root-{uuid.uuid4().hex[:6]}@example.com",
        first_superuser_password=SUPERUSER_PASSWORD,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await sign_up(client)


@pytest.fixture
async def superuser_headers(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> dict[str, str]:
    async with async_sessionmaker(engine).begin() as session:
        assert await ensure_superuser(session, settings) is not None
        # A second bootstrap finds the user and changes nothing.
        assert await ensure_superuser(session, settings) is not None
    assert settings.first_superuser_email is not None
    tokens = await login(client, settings.first_superuser_email, SUPERUSER_PASSWORD)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def create_key(
    client: httpx.AsyncClient, owner: Account, scopes: list[str]
) -> dict[str, str]:
    response = await client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": scopes}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, str] = response.json()
    return created


async def test_api_key_is_shown_once_and_works_as_bearer_or_header(
    client: httpx.AsyncClient, owner: Account
) -> None:
    created = await create_key(client, owner, ["tasks:read"])
    key = created["key"]
    assert key.startswith(f"sy_{created['prefix']}_")
    listed = await client.get("/api/v1/api-keys", headers=owner.headers)
    assert key not in listed.text
    assert [item["id"] for item in listed.json()] == [created["id"]]
    assert listed.json()[0]["last_used_at"] is None

    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = await client.get("/api/v1/auth/me", headers=headers)
        assert me.status_code == 200
        assert me.json()["kind"] == "api_key"
        assert me.json()["scopes"] == ["tasks:read"]
        assert me.json()["tenant"]["id"] == str(owner.tenant_id)
    used = (await client.get("/api/v1/api-keys", headers=owner.headers)).json()[0]
    assert used["last_used_at"] is not None


async def test_missing_scope_is_403_naming_it(client: httpx.AsyncClient, owner: Account) -> None:
    key = (await create_key(client, owner, ["tasks:read"]))["key"]
    listed = await client.get("/api/v1/tasks/", headers={"X-API-Key": key})
    assert listed.status_code == 200
    refused = await client.post(
        "/api/v1/tasks/run", json={"task": "system.echo"}, headers={"X-API-Key": key}
    )
    assert refused.status_code == 403
    assert "'tasks:run'" in refused.json()["detail"]
    admin_only = await client.post(
        "/api/v1/tasks/register",
        json={"name": "x", "task": "system.echo", "payload": {"message": "x"}},
        headers={"X-API-Key": key},
    )
    assert admin_only.status_code == 403
    assert "'tasks:admin'" in admin_only.json()["detail"]


async def test_keys_cannot_manage_keys_and_unknown_scopes_are_422(
    client: httpx.AsyncClient, owner: Account
) -> None:
    key = (await create_key(client, owner, ["tasks:admin"]))["key"]
    response = await client.get("/api/v1/api-keys", headers={"X-API-Key": key})
    assert response.status_code == 403
    bad = await client.post(
        "/api/v1/api-keys", json={"name": "x", "scopes": ["root"]}, headers=owner.headers
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "body.scopes.0"


async def test_revoked_and_forged_keys_are_401(client: httpx.AsyncClient, owner: Account) -> None:
    created = await create_key(client, owner, ["tasks:read"])
    forged = created["key"][:-4] + "abcd"
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": forged})).status_code == 401
    revoked = await client.delete(f"/api/v1/api-keys/{created['id']}", headers=owner.headers)
    assert revoked.json()["revoked_at"] is not None
    response = await client.get("/api/v1/auth/me", headers={"X-API-Key": created["key"]})
    assert response.status_code == 401


async def test_members_are_not_tenant_admins(client: httpx.AsyncClient, owner: Account) -> None:
    key = (await create_key(client, owner, ["tasks:read", "tasks:run"]))["key"]
    current = await client.get("/api/v1/tenants/current", headers={"X-API-Key": key})
    assert current.json()["id"] == str(owner.tenant_id)
    rename = await client.patch(
        "/api/v1/tenants/current", json={"name": "Nope"}, headers={"X-API-Key": key}
    )
    assert rename.status_code == 403
    renamed = await client.patch(
        "/api/v1/tenants/current", json={"name": "Acme Ltd"}, headers=owner.headers
    )
    assert renamed.json()["name"] == "Acme Ltd"


async def test_superuser_lists_creates_and_suspends_tenants(
    client: httpx.AsyncClient, owner: Account, superuser_headers: dict[str, str]
) -> None:
    assert (await client.get("/api/v1/tenants", headers=owner.headers)).status_code == 403
    listed = await client.get("/api/v1/tenants", headers=superuser_headers, params={"limit": 500})
    assert str(owner.tenant_id) in {tenant["id"] for tenant in listed.json()}
    slug = f"made-{uuid.uuid4().hex[:6]}"
    made = await client.post(
        "/api/v1/tenants", json={"name": "Made", "slug": slug}, headers=superuser_headers
    )
    assert made.status_code == 201
    assert made.json()["slug"] == slug
    found = await client.get(
        "/api/v1/tenants", headers=superuser_headers, params={"search": slug.upper()}
    )
    assert [tenant["slug"] for tenant in found.json()] == [slug]
    wildcard = await client.get(
        "/api/v1/tenants", headers=superuser_headers, params={"search": "%"}
    )
    assert wildcard.json() == []  # a literal percent sign, not "anything"
    taken = await client.post(
        "/api/v1/tenants", json={"name": "Again", "slug": slug}, headers=superuser_headers
    )
    assert taken.status_code == 409

    key = (await create_key(client, owner, ["tasks:read"]))["key"]
    suspended = await client.post(
        f"/api/v1/tenants/{owner.tenant_id}/suspend", headers=superuser_headers
    )
    assert suspended.json()["status"] == "suspended"
    for headers in (owner.headers, {"X-API-Key": key}):
        response = await client.get("/api/v1/tasks/", headers=headers)
        assert response.status_code == 403
        assert response.json()["detail"] == "This tenant is suspended."
    login_attempt = await client.post(
        "/api/v1/auth/login", json={"email": owner.email, "password": owner.password}
    )
    assert login_attempt.status_code == 403
    await client.post(f"/api/v1/tenants/{owner.tenant_id}/activate", headers=superuser_headers)
    assert (await client.get("/api/v1/tasks/", headers=owner.headers)).status_code == 200
    missing = await client.post(
        f"/api/v1/tenants/{uuid.uuid4()}/suspend", headers=superuser_headers
    )
    assert missing.status_code == 404
