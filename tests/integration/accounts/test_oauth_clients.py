"""OAuth2 client credentials over HTTP, with Authlib's client (a standard library, not
hand-built requests) against the gateway served by uvicorn, and the RFC 6749 §5.2 errors."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from fastapi import FastAPI

from switchyard.api.app import create_app
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.servers import free_port


@pytest.fixture
async def served(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(make_settings())) as client:
        yield client


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway behind a real HTTP server on 127.0.0.1 (uvicorn, in this event loop)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    assert server.started
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield client
    server.should_exit = True
    await serving


def oauth_client(
    api: httpx.AsyncClient, client_id: str, secret: str, method: str
) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id, secret, token_endpoint_auth_method=method, base_url=str(api.base_url)
    )


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials_with_authlib(served: httpx.AsyncClient, method: str) -> None:
    client = served
    token_url = f"{client.base_url}/api/v1/oauth/token"
    owner = await sign_up(client, "Machines")
    created = await client.post(
        "/api/v1/oauth-clients",
        json={"name": "etl", "scopes": ["tasks:read", "documents:read"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    client_id, secret = created.json()["client_id"], created.json()["client_secret"]
    listed = (await client.get("/api/v1/oauth-clients", headers=owner.headers)).text
    assert client_id in listed
    assert secret not in listed

    async with oauth_client(client, client_id, secret, method) as machine:
        token = await machine.fetch_token(token_url, grant_type="client_credentials")
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "documents:read tasks:read"
        assert 0 < token["expires_in"] <= 600
        me = await machine.get("/api/v1/auth/me")
        assert me.status_code == 200
        assert me.json()["kind"] == "oauth_client"
        assert me.json()["tenant"]["id"] == str(owner.tenant_id)
        assert (await machine.get("/api/v1/tasks/")).status_code == 200
        # Beyond its scopes: 403 naming the scope; admin routes: 403.
        denied = await machine.post("/api/v1/tasks/run", json={"task": "system.echo"})
        assert denied.status_code == 403
        assert "tasks:run" in denied.json()["detail"]
        assert (await machine.get("/api/v1/members")).status_code == 403

        narrow = await machine.fetch_token(
            token_url, grant_type="client_credentials", scope="tasks:read"
        )
        assert narrow["scope"] == "tasks:read"
        with pytest.raises(OAuthError) as refused:
            await machine.fetch_token(token_url, grant_type="client_credentials", scope="tasks:run")
        assert refused.value.error == "invalid_scope"

        revoked = await client.delete(
            f"/api/v1/oauth-clients/{created.json()['id']}", headers=owner.headers
        )
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        # Its token stops at the next request; no new one is issued.
        assert (await machine.get("/api/v1/auth/me")).status_code == 401
        with pytest.raises(OAuthError) as gone:
            await machine.fetch_token(token_url, grant_type="client_credentials")
        assert gone.value.error == "invalid_client"


async def test_token_endpoint_errors_are_rfc_6749(client: httpx.AsyncClient) -> None:
    owner = await sign_up(client, "Errors")
    created = (
        await client.post(
            "/api/v1/oauth-clients",
            json={"name": "x", "scopes": ["tasks:read"]},
            headers=owner.headers,
        )
    ).json()
    basic = base64.b64encode(f"{created['client_id']}:wrong".encode()).decode()
    cases = [
        ({"grant_type": "password"}, {}, 400, "unsupported_grant_type"),
        ({}, {}, 400, "invalid_request"),
        ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),
        (
            {"grant_type": "client_credentials"},
            {"Authorization": f"Basic {basic}"},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": created["client_id"]},
            {"Authorization": f"Basic {basic}"},
            400,
            "invalid_request",
        ),
    ]
    for form, headers, status, error in cases:
        answer = await client.post("/api/v1/oauth/token", data=form, headers=headers)
        assert answer.status_code == status, (form, answer.text)
        assert answer.json()["error"] == error
        assert answer.json()["error_description"]
        assert answer.headers["cache-control"] == "no-store"
        if status == 401:
            assert answer.headers["www-authenticate"].startswith("Basic")
    as_json = await client.post("/api/v1/oauth/token", json={"grant_type": "client_credentials"})
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "invalid_request"
    # Clients are for tenant admins; their ids are not another tenant's to revoke.
    other = await sign_up(client, "Other")
    assert (
        await client.delete(f"/api/v1/oauth-clients/{created['id']}", headers=other.headers)
    ).status_code == 404


async def create_client(api: httpx.AsyncClient, name: str) -> tuple[str, str]:
    owner = await sign_up(api, name)
    created = await api.post(
        "/api/v1/oauth-clients",
        json={"name": "etl", "scopes": ["tasks:read"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    return created.json()["client_id"], created.json()["client_secret"]


def grant(client_id: str, secret: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}


async def test_wrong_secrets_from_one_address_never_lock_the_client_out_elsewhere(
    make_settings: SettingsFactory,
) -> None:
    """Anyone who knows a client id can send wrong secrets: they use up the failures of their
    own address only, and the right secret from the client's address still gets its token."""
    settings = make_settings(rate_limit_client_failures="3/15 minutes", cache_namespace=unique())
    app = create_app(settings)
    async with running(app) as api:
        client_id, secret = await create_client(api, "Lockout")
        attacker = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("203.0.113.66", 40000)),
            base_url="http://testserver",
        )
        async with attacker:
            tries = [
                await attacker.post("/api/v1/oauth/token", data=grant(client_id, "sycs_wrong"))
                for _ in range(5)
            ]
            assert [t.status_code for t in tries] == [401, 401, 401, 429, 429]
            limited = tries[-1]
            assert limited.json()["error"] == "slow_down"  # RFC 6749 §5.2's shape, not problem+json
            assert limited.json()["error_description"]
            assert limited.headers["content-type"] == "application/json"
            assert limited.headers["cache-control"] == "no-store"
            assert 1 <= int(limited.headers["retry-after"]) <= 15 * 60 + 1
            # The address that failed waits, even with the right secret ...
            blocked = await attacker.post("/api/v1/oauth/token", data=grant(client_id, secret))
            assert blocked.status_code == 429
        # ... but the client, from its own address, is not locked out.
        token = await api.post("/api/v1/oauth/token", data=grant(client_id, secret))
        assert token.status_code == 200, token.text
        assert token.json()["access_token"]


async def test_the_token_endpoint_has_its_own_limit_that_authlib_reads(
    make_settings: SettingsFactory,
) -> None:
    """/oauth/token counts in RATE_LIMIT_TOKENS, not in the sign-in limit (a machine client's
    token requests never use up its address's sign-ins), and its 429 is an OAuth error that
    Authlib raises as one, with the error code."""
    settings = make_settings(
        rate_limit_auth="3/minute", rate_limit_tokens="3/minute", cache_namespace=unique()
    )
    async with serving(create_app(settings)) as api:
        owner = await sign_up(api, "Tokens")  # two requests of the three: register, login
        created = await api.post(
            "/api/v1/oauth-clients",
            json={"name": "etl", "scopes": ["tasks:read"]},
            headers=owner.headers,
        )
        client_id, secret = created.json()["client_id"], created.json()["client_secret"]
        token_url = f"{api.base_url}/api/v1/oauth/token"
        async with oauth_client(api, client_id, secret, "client_secret_basic") as machine:
            for _ in range(3):
                assert (await machine.fetch_token(token_url))["access_token"]
            with pytest.raises(OAuthError) as limited:
                await machine.fetch_token(token_url)
        assert limited.value.error == "slow_down"
        # The sign-in bucket was not touched by the token requests.
        login = await api.post(
            "/api/v1/auth/login", json={"email": owner.email, "password": owner.password}
        )
        assert login.status_code == 200, login.text


def unique() -> str:
    return f"oauth-{uuid.uuid4().hex[:8]}"
