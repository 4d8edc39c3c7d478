"""OAuth2 client credentials over HTTP, with Authlib's client (a standard library, not
hand-built requests) against the gateway served by uvicorn, and the RFC 6749 §5.2 errors."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from switchyard.api.app import create_app
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.servers import free_port


@pytest.fixture
async def served(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway behind a real HTTP server on 127.0.0.1 (uvicorn, in this event loop)."""
    port = free_port()
    config = uvicorn.Config(
        create_app(make_settings()), host="127.0.0.1", port=port, log_config=None
    )
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
