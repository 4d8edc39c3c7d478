"""The audit log: each audited action writes one event with the right actor, request id and
address, and no secret of the flow is in any event or log line; filters and cursor pages; the
table is append-only; beat purges past the retention."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.domains import load_task_modules
from switchyard.platform.beat import Beat
from switchyard.platform.broker import Broker
from switchyard.services.container import Services
from switchyard.settings import Settings
from tests.fixtures.accounts import PASSWORD, login, sign_up
from tests.fixtures.mail import AccountsPlatform, link_token
from tests.fixtures.tasks import insert_dead_letter

NEW_PASSWORD = "a fresh and long passphrase"
SOURCE_PASSWORD = "pw-" + uuid.uuid4().hex


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def ok(answer: Any, status: int = 200) -> dict[str, Any]:
    response = await answer
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


async def events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page of /audit-events, followed by its cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 7, **({"cursor": cursor} if cursor else {})}
        page = await ok(client.get("/api/v1/audit-events", params=query, headers=headers))
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def test_each_audited_action_writes_one_event_with_its_actor_and_no_secret(
    accounts_platform: AccountsPlatform,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, mailbox = accounts_platform.client, accounts_platform.mailbox
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [PASSWORD, NEW_PASSWORD, SOURCE_PASSWORD]
    owner = await sign_up(client, "Audited")
    secrets += [owner.access_token, owner.refresh_token]
    me = f"user:{owner.user_id}"
    tenant = owner.tenant_id
    h = owner.headers

    wrong = await client.post(
        "/api/v1/auth/login", json={"email": owner.email, "password": "wrong" * 3}
    )
    assert wrong.status_code == 401

    key = await ok(
        client.post("/api/v1/api-keys", json={"name": "ci", "scopes": ["tasks:read"]}, headers=h),
        201,
    )
    secrets.append(key["key"])
    await ok(client.delete(f"/api/v1/api-keys/{key['id']}", headers=h))
    machine = await ok(
        client.post(
            "/api/v1/oauth-clients", json={"name": "etl", "scopes": ["tasks:read"]}, headers=h
        ),
        201,
    )
    secrets.append(machine["client_secret"])
    token = await client.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(machine["client_id"], machine["client_secret"]),
    )
    secrets.append(token.json()["access_token"])
    await ok(client.delete(f"/api/v1/oauth-clients/{machine['id']}", headers=h))

    url = f"postgresql://crm:{SOURCE_PASSWORD}@crm.example.com/crm"
    source = await ok(
        client.post("/api/v1/data-sources", json={"name": "crm", "url": url}, headers=h), 201
    )
    await ok(client.patch(f"/api/v1/data-sources/{source['id']}", json={"name": "crm2"}, headers=h))
    tested = await ok(client.post(f"/api/v1/data-sources/{source['id']}/test", headers=h), 202)
    await ok(client.delete(f"/api/v1/data-sources/{source['id']}", headers=h), 204)

    definition = {"name": "nightly", "task": "system.echo", "payload": {"message": "x"}}
    await ok(client.post("/api/v1/tasks/register", json=definition, headers=h), 201)
    await ok(client.patch("/api/v1/tasks/definitions/nightly", json={"enabled": False}, headers=h))
    await ok(client.delete("/api/v1/tasks/definitions/nightly", headers=h), 204)
    replayed, deleted = (
        await insert_dead_letter(engine, tenant),
        await insert_dead_letter(engine, tenant),
    )
    replay = await ok(
        client.post(f"/api/v1/tasks/dead-letters/{replayed.id}/replay", headers=h), 202
    )
    await ok(client.delete(f"/api/v1/tasks/dead-letters/{deleted.id}", headers=h), 204)

    bob, carol, dave = (
        f"{name}-{uuid.uuid4().hex[:6]}@example.com" for name in ("bob", "carol", "dave")
    )
    for email in (bob, carol, dave):
        await ok(client.post("/api/v1/invitations", json={"email": email}, headers=h), 201)
    invitations = {
        item["email"]: item["id"]
        for item in (await ok(client.get("/api/v1/invitations", headers=h)))["items"]
    }
    await ok(client.delete(f"/api/v1/invitations/{invitations[carol]}", headers=h))
    joined = {}
    for email in (bob, dave):
        link = link_token((await mailbox.wait_for(email))[0])
        secrets.append(link)
        joined[email] = (
            await ok(
                client.post(
                    "/api/v1/invitations/accept", json={"token": link, "password": PASSWORD}
                )
            )
        )["user_id"]
    await ok(client.patch(f"/api/v1/members/{joined[bob]}", json={"role": "admin"}, headers=h))
    await ok(client.delete(f"/api/v1/members/{joined[dave]}", headers=h), 204)
    await ok(
        client.post("/api/v1/members/transfer-ownership", json={"user_id": joined[bob]}, headers=h)
    )

    await ok(client.post("/api/v1/auth/password-reset", json={"email": owner.email}), 202)
    messages = await mailbox.wait_for(owner.email, count=2)  # verification, reset
    reset = link_token(messages[1])
    secrets += [reset, link_token(messages[0])]
    await ok(
        client.post(
            "/api/v1/auth/password-reset/confirm", json={"token": reset, "password": NEW_PASSWORD}
        ),
        204,
    )
    again = await login(client, owner.email, NEW_PASSWORD)
    secrets += [again["access_token"], again["refresh_token"]]
    await ok(
        client.post("/api/v1/auth/logout", json={"refresh_token": again["refresh_token"]}), 204
    )

    admin = await sign_up(client, "Platform")
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET is_superuser = true WHERE id = :id"), {"id": admin.user_id}
        )
    await ok(client.post(f"/api/v1/tenants/{tenant}/suspend", headers=admin.headers))
    await ok(client.post(f"/api/v1/tenants/{tenant}/activate", headers=admin.headers))
    secrets += [admin.access_token, admin.refresh_token]

    bob_login = await login(client, bob)
    secrets += [bob_login["access_token"], bob_login["refresh_token"]]
    reader = bearer(bob_login)
    for run_id in (tested["task_id"], replay["task_id"]):
        await wait_for_run_as(client, reader, run_id)

    listed = await events(client, reader)
    actions = Counter(event["action"] for event in listed)
    bob_actor, dave_actor = f"user:{joined[bob]}", f"user:{joined[dave]}"
    expected = {
        "auth.sign_in": 2 + 1,  # the owner twice, bob once (dave's sign-in was not made)
        "auth.sign_in_failed": 1,
        "auth.sign_out": 1,
        "auth.password_reset": 1,
        "invitation.sent": 3,
        "invitation.revoked": 1,
        "invitation.accepted": 2,
        "member.role_changed": 1,
        "member.removed": 1,
        "tenant.ownership_transferred": 1,
        "api_key.created": 1,
        "api_key.revoked": 1,
        "oauth_client.created": 1,
        "oauth_client.revoked": 1,
        "data_source.created": 1,
        "data_source.changed": 1,
        "data_source.tested": 1,
        "data_source.deleted": 1,
        "definition.created": 1,
        "definition.changed": 1,
        "definition.deleted": 1,
        "dead_letter.replayed": 1,
        "dead_letter.deleted": 1,
        "tenant.suspended": 1,
        "tenant.activated": 1,
    }
    assert dict(actions) == expected
    by_action = {event["action"]: event for event in listed}
    owner_actions = set(expected) - {
        "auth.sign_in",
        "auth.sign_in_failed",
        "invitation.accepted",
        "tenant.suspended",
        "tenant.activated",
    }
    for action in owner_actions:
        assert by_action[action]["actor"] == me, action
    assert by_action["auth.sign_in_failed"]["actor"] == "anonymous"
    assert by_action["auth.sign_in_failed"]["target_id"] == str(owner.user_id)
    assert {event["actor"] for event in listed if event["action"] == "invitation.accepted"} == {
        bob_actor,
        dave_actor,
    }
    assert {event["actor"] for event in listed if event["action"] == "auth.sign_in"} == {
        me,
        bob_actor,
    }
    assert by_action["tenant.suspended"]["actor"] == f"user:{admin.user_id}"
    assert by_action["member.role_changed"]["details"] == {"from": "member", "to": "admin"}
    assert by_action["member.removed"]["target_id"] == joined[dave]
    assert by_action["data_source.tested"]["details"]["run_id"] == tested["task_id"]
    for event in listed:
        assert event["request_id"], event
        assert event["address"] == "127.0.0.1", event

    # Filters: by action, by actor, by time; one page equals the pages.
    assert [
        event["action"] for event in await events(client, reader, action="api_key.created")
    ] == ["api_key.created"]
    assert {event["actor"] for event in await events(client, reader, actor=bob_actor)} == {
        bob_actor
    }
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert await events(client, reader, since=future) == []
    assert len(await events(client, reader, until=future)) == len(listed)
    bad = await client.get("/api/v1/audit-events", params={"action": "nope"}, headers=reader)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.action"
    key_reader = await ok(
        client.post(
            "/api/v1/api-keys", json={"name": "r", "scopes": ["tasks:read"]}, headers=reader
        ),
        201,
    )
    refused = await client.get("/api/v1/audit-events", headers={"X-API-Key": key_reader["key"]})
    assert refused.status_code == 403  # owners and admins, signed in
    secrets.append(key_reader["key"])

    # No secret of the flow in any event (all columns), in the gateway's log or the worker's.
    async with engine.connect() as connection:
        rows = (
            (
                await connection.execute(
                    text("SELECT row_to_json(e)::text FROM audit_events e WHERE tenant_id = :t"),
                    {"t": tenant},
                )
            )
            .scalars()
            .all()
        )
    stored = "\n".join(rows)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    worker = accounts_platform.worker.stderr() + accounts_platform.worker.stdout()
    assert "account email sent" in worker
    for secret in secrets:
        assert secret not in stored
        assert secret not in logged
        assert secret not in worker
        assert secret not in json.dumps(listed)


async def wait_for_run_as(client: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = (await client.get(f"/api/v1/tasks/{run_id}", headers=headers)).json()
        if run["state"] in ("succeeded", "failed", "dead_lettered", "cancelled"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


async def test_the_log_is_append_only_and_beat_purges_past_the_retention(
    task_settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    owner_tenant = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO tenants (id, name, slug) VALUES (:id, 'Old', :slug)"),
            {"id": owner_tenant, "slug": f"old-{owner_tenant.hex[:8]}"},
        )
        for days in (400, 10):
            await connection.execute(
                text(
                    "INSERT INTO audit_events (tenant_id, action, actor, created_at) "
                    "VALUES (:t, 'api_key.created', 'user:x', now() - make_interval(days => :d))"
                ),
                {"t": owner_tenant, "d": days},
            )
    for statement in (
        "UPDATE audit_events SET actor = 'someone else' WHERE tenant_id = :t",
        "DELETE FROM audit_events WHERE tenant_id = :t",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement), {"t": owner_tenant})

    settings = task_settings.model_copy(update={"audit_retention_days": 365})
    services = Services.create(settings, "beat")
    broker = Broker.create(settings)
    assert broker is not None
    try:
        beat = Beat(services, broker.publisher, load_task_modules(), tmp_path / "beat.heartbeat")
        await beat.tick()  # the leader's first tick purges
        await beat._resign()
    finally:
        await services.close()
        broker.close()
    async with engine.connect() as connection:
        ages = (
            (
                await connection.execute(
                    text(
                        "SELECT extract(day FROM now() - created_at)::int FROM audit_events "
                        "WHERE tenant_id = :t"
                    ),
                    {"t": owner_tenant},
                )
            )
            .scalars()
            .all()
        )
    assert ages == [10]
    # Deleting the tenant takes its events with it (the trigger lets its cascade through).
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": owner_tenant})
        left = await connection.scalar(
            text("SELECT count(*) FROM audit_events WHERE tenant_id = :t"), {"t": owner_tenant}
        )
    assert left == 0
