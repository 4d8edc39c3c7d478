"""Teams on the real servers: invitations, members, password reset and email verification,
with a real SMTP server receiving what a real worker sends."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fixtures.accounts import PASSWORD, login, sign_up
from tests.fixtures.mail import AccountsPlatform, link_token, text_of

NEW_PASSWORD = "another correct horse battery"


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def invite(client: httpx.AsyncClient, headers: dict[str, str], email: str, role: str) -> str:
    invited = await client.post(
        "/api/v1/invitations", json={"email": email, "role": role}, headers=headers
    )
    assert invited.status_code == 201, invited.text
    assert invited.json()["status"] == "pending"
    assert "token" not in invited.text
    return str(invited.json()["id"])


async def test_an_invited_user_joins_with_the_role_and_sees_only_that_tenant(
    accounts_platform: AccountsPlatform,
) -> None:
    client, mailbox = accounts_platform.client, accounts_platform.mailbox
    owner = await sign_up(client, "Team A")
    other = await sign_up(client, "Team B")
    # Sign-up emails a verification link.
    (verification,) = await mailbox.wait_for(owner.email)
    assert "Confirm" in verification["Subject"]
    for account, name in ((owner, "a-only"), (other, "b-only")):
        created = await client.post(
            "/api/v1/tasks/register",
            json={"name": name, "task": "system.echo", "payload": {"message": name}},
            headers=account.headers,
        )
        assert created.status_code == 201

    bob = f"bob-{uuid.uuid4().hex[:8]}@example.com"
    await invite(client, owner.headers, bob, "member")
    (invitation,) = await mailbox.wait_for(bob)
    assert "Team A" in invitation["Subject"]
    assert owner.email in text_of(invitation)
    token = link_token(invitation)

    joined = await client.post(
        "/api/v1/invitations/accept", json={"token": token, "password": PASSWORD}
    )
    assert joined.status_code == 200, joined.text
    assert joined.json()["role"] == "member"
    assert joined.json()["account_created"] is True
    assert joined.json()["tenant"]["id"] == str(owner.tenant_id)
    again = await client.post(
        "/api/v1/invitations/accept", json={"token": token, "password": PASSWORD}
    )
    assert again.status_code == 422
    assert again.json()["errors"][0]["field"] == "body.token"

    bob_headers = bearer(await login(client, bob))
    me = (await client.get("/api/v1/auth/me", headers=bob_headers)).json()
    assert (me["tenant"]["id"], me["role"]) == (str(owner.tenant_id), "member")
    seen = (await client.get("/api/v1/tasks/registered", headers=bob_headers)).text
    assert "a-only" in seen
    assert "b-only" not in seen
    assert (await client.get("/api/v1/members", headers=bob_headers)).status_code == 403

    # A role change applies at the member's next request, on the same token.
    members = (await client.get("/api/v1/members", headers=owner.headers)).json()["items"]
    bob_id = next(member["user_id"] for member in members if member["email"] == bob)
    assert {member["role"] for member in members} == {"owner", "member"}
    promoted = await client.patch(
        f"/api/v1/members/{bob_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert promoted.status_code == 200
    assert promoted.json()["role"] == "admin"
    assert (await client.get("/api/v1/members", headers=bob_headers)).status_code == 200

    # The owner can't be demoted or removed; an admin can't take ownership by a patch.
    owner_id = str(owner.user_id)
    for call in (
        client.patch(f"/api/v1/members/{owner_id}", json={"role": "member"}, headers=bob_headers),
        client.delete(f"/api/v1/members/{owner_id}", headers=bob_headers),
        client.delete("/api/v1/members/me", headers=owner.headers),
    ):
        refused = await call
        assert refused.status_code == 409, refused.text
    owner_only = await client.patch(
        f"/api/v1/members/{bob_id}", json={"role": "owner"}, headers=owner.headers
    )
    assert owner_only.status_code == 422
    assert owner_only.json()["errors"][0]["field"] == "body.role"

    # A removed member's next request is refused.
    removed = await client.delete(f"/api/v1/members/{bob_id}", headers=owner.headers)
    assert removed.status_code == 204
    assert (await client.get("/api/v1/auth/me", headers=bob_headers)).status_code == 401
    assert (
        await client.post("/api/v1/auth/login", json={"email": bob, "password": PASSWORD})
    ).status_code == 401
    # Exactly the expected messages, no more.
    assert len(mailbox.to(bob)) == 1
    assert len(mailbox.to(owner.email)) == 1


async def test_an_existing_user_joins_a_second_tenant_and_picks_one_at_sign_in(
    accounts_platform: AccountsPlatform,
) -> None:
    client, mailbox = accounts_platform.client, accounts_platform.mailbox
    host = await sign_up(client, "Host")
    guest = await sign_up(client, "Guest home")
    await invite(client, host.headers, guest.email, "admin")
    messages = await mailbox.wait_for(guest.email, count=2)  # verification, invitation
    invitation = next(message for message in messages if "invited" in message["Subject"])
    token = link_token(invitation)
    with_password = await client.post(
        "/api/v1/invitations/accept", json={"token": token, "password": PASSWORD}
    )
    assert with_password.status_code == 422
    assert with_password.json()["errors"][0]["field"] == "body.password"
    joined = await client.post("/api/v1/invitations/accept", json={"token": token})
    assert joined.status_code == 200, joined.text
    assert joined.json()["account_created"] is False

    ambiguous = await client.post(
        "/api/v1/auth/login", json={"email": guest.email, "password": PASSWORD}
    )
    assert ambiguous.status_code == 422
    error = ambiguous.json()["errors"][0]
    assert error["field"] == "body.tenant"
    host_slug = joined.json()["tenant"]["slug"]
    assert host_slug in error["message"]
    chosen = await client.post(
        "/api/v1/auth/login",
        json={"email": guest.email, "password": PASSWORD, "tenant": host_slug},
    )
    assert chosen.status_code == 200
    me = (await client.get("/api/v1/auth/me", headers=bearer(chosen.json()))).json()
    assert (me["tenant"]["slug"], me["role"]) == (host_slug, "admin")

    # Ownership moves to the guest; the host becomes an admin; one owner at all times.
    moved = await client.post(
        "/api/v1/members/transfer-ownership",
        json={"user_id": str(guest.user_id)},
        headers=host.headers,
    )
    assert moved.status_code == 200, moved.text
    roles = {member["email"]: member["role"] for member in moved.json()}
    assert roles == {host.email: "admin", guest.email: "owner"}
    assert (
        await client.post(
            "/api/v1/members/transfer-ownership",
            json={"user_id": str(guest.user_id)},
            headers=host.headers,
        )
    ).status_code == 403
    # Deactivating the (former owner, now admin) host: refused at the next request.
    guest_headers = bearer(chosen.json())
    off = await client.patch(
        f"/api/v1/members/{host.user_id}", json={"is_active": False}, headers=guest_headers
    )
    assert off.status_code == 200
    assert off.json()["is_active"] is False
    assert (await client.get("/api/v1/auth/me", headers=host.headers)).status_code == 401


async def test_invitation_links_expire_and_end_with_a_resend_or_a_revoke(
    accounts_platform: AccountsPlatform, engine: AsyncEngine
) -> None:
    client, mailbox = accounts_platform.client, accounts_platform.mailbox
    owner = await sign_up(client, "Links")
    carol = f"carol-{uuid.uuid4().hex[:8]}@example.com"
    invitation_id = await invite(client, owner.headers, carol, "member")
    first = link_token((await mailbox.wait_for(carol))[0])
    duplicate = await client.post(
        "/api/v1/invitations", json={"email": carol}, headers=owner.headers
    )
    assert duplicate.status_code == 409

    resent = await client.post(f"/api/v1/invitations/{invitation_id}/resend", headers=owner.headers)
    assert resent.status_code == 200
    assert resent.json()["sent_count"] == 2
    second = link_token((await mailbox.wait_for(carol, count=2))[1])
    assert second != first
    stale = await client.post(
        "/api/v1/invitations/accept", json={"token": first, "password": PASSWORD}
    )
    assert stale.status_code == 422

    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE invitations SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": invitation_id},
        )
    expired = await client.post(
        "/api/v1/invitations/accept", json={"token": second, "password": PASSWORD}
    )
    assert expired.status_code == 422
    listed = (await client.get("/api/v1/invitations", headers=owner.headers)).json()["items"]
    assert [(item["email"], item["status"]) for item in listed] == [(carol, "expired")]

    # An expired invitation makes way for a new one; a revoked link is dead.
    again = await invite(client, owner.headers, carol, "member")
    third = link_token((await mailbox.wait_for(carol, count=3))[2])
    revoked = await client.delete(f"/api/v1/invitations/{again}", headers=owner.headers)
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    dead = await client.post(
        "/api/v1/invitations/accept", json={"token": third, "password": PASSWORD}
    )
    assert dead.status_code == 422
    forged = await client.post(
        "/api/v1/invitations/accept",
        json={"token": f"{again}.{'A' * 43}", "password": PASSWORD},
    )
    assert forged.status_code == 422
    assert len(mailbox.to(carol)) == 3


async def test_password_reset_answers_alike_works_once_and_ends_every_sign_in(
    accounts_platform: AccountsPlatform, engine: AsyncEngine
) -> None:
    client, mailbox = accounts_platform.client, accounts_platform.mailbox
    account = await sign_up(client, "Reset")
    await mailbox.wait_for(account.email)  # the verification link
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    known = await client.post("/api/v1/auth/password-reset", json={"email": account.email})
    missing = await client.post("/api/v1/auth/password-reset", json={"email": unknown})
    assert known.status_code == missing.status_code == 202
    assert known.json() == missing.json()
    (_, reset) = await mailbox.wait_for(account.email, count=2)
    assert "Reset" in reset["Subject"]
    token = link_token(reset)

    short = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": "short"}
    )
    assert short.status_code == 422
    assert short.json()["errors"][0]["field"] == "body.password"
    done = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert done.status_code == 204, done.text
    twice = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert twice.status_code == 422
    # Every sign-in ended: the old access and refresh tokens; the old password.
    assert (await client.get("/api/v1/auth/me", headers=account.headers)).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert refreshed.status_code == 401
    old = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert old.status_code == 401
    await login(client, account.email, NEW_PASSWORD)

    # A link past its expiry is refused.
    await client.post("/api/v1/auth/password-reset", json={"email": account.email})
    late = link_token((await mailbox.wait_for(account.email, count=3))[2])
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE user_tokens SET expires_at = now() WHERE id = :id"),
            {"id": late.split(".")[0]},
        )
    expired = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": late, "password": PASSWORD}
    )
    assert expired.status_code == 422
    assert mailbox.to(unknown) == []
    assert len(mailbox.to(account.email)) == 3


async def test_email_verification_gates_sign_in_when_required(
    accounts_platform: AccountsPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, mailbox = accounts_platform.client, accounts_platform.mailbox
    # The module's gateway: back to its setting after this test.
    monkeypatch.setattr(accounts_platform.settings, "require_email_verification", True)
    email = f"verify-{uuid.uuid4().hex[:8]}@example.com"
    registered = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "tenant_name": "Verify"},
    )
    assert registered.status_code == 201
    assert registered.json()["email_verified"] is False
    refused = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 403
    assert "Confirm your email" in refused.json()["detail"]
    resend = await client.post("/api/v1/auth/verify-email/resend", json={"email": email})
    assert resend.status_code == 202
    first, second = await mailbox.wait_for(email, count=2)
    # The resend replaced the first link.
    stale = await client.post("/api/v1/auth/verify-email", json={"token": link_token(first)})
    assert stale.status_code == 422
    verified = await client.post("/api/v1/auth/verify-email", json={"token": link_token(second)})
    assert verified.status_code == 204
    await login(client, email)
    # Verified: no more links are sent.
    assert (
        await client.post("/api/v1/auth/verify-email/resend", json={"email": email})
    ).status_code == 202
    members = (
        await client.get("/api/v1/members", headers=bearer(await login(client, email)))
    ).json()["items"]
    assert members[0]["email_verified"] is True
    assert len(mailbox.to(email)) == 2
