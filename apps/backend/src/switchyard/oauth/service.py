"""OAuth clients of a tenant (created by its admins with a subset of scopes; the secret shown
once), and the client-credentials grant: a short-lived access token with the client's scopes
(or fewer, if asked), accepted everywhere an API key is."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth import security
from switchyard.auth.principal import Principal
from switchyard.auth.scopes import ROLE_SCOPES
from switchyard.auth.service import creator_role
from switchyard.db.models import OAuthClient, Tenant, TenantStatus
from switchyard.oauth.repository import ClientRepository
from switchyard.oauth.schemas import AccessToken, ClientIn
from switchyard.platform import audit
from switchyard.settings import Settings

LAST_USED_GRANULARITY_SECONDS = 60


class TokenRequestError(Exception):
    """An RFC 6749 §5.2 error: `error`, its description, and the HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str
    basic: bool  # presented with HTTP Basic (a 401 then names the Basic scheme)


async def create(
    session: AsyncSession, admin: Principal, body: ClientIn
) -> tuple[OAuthClient, str]:
    client_id, secret, secret_hash = security.new_client_credentials()
    client = OAuthClient(
        tenant_id=admin.tenant_id,
        name=body.name,
        client_id=client_id,
        secret_hash=secret_hash,
        scopes=sorted(set(body.scopes)),
        created_by=admin.user_id,
    )
    session.add(client)
    await session.flush()
    await session.refresh(client)
    audit.record(
        session,
        admin.tenant_id,
        "oauth_client.created",
        admin.actor,
        ("oauth_client", client.id),
        {"name": client.name, "client_id": client_id, "scopes": client.scopes},
    )
    return client, secret


async def revoke(session: AsyncSession, admin: Principal, row_id: uuid.UUID) -> OAuthClient:
    """Its tokens are refused from the next request on."""
    client = await ClientRepository(session, admin.tenant_id).get_or_404(row_id)
    if client.revoked_at is None:
        client.revoked_at = datetime.now(UTC)
        audit.record(
            session, admin.tenant_id, "oauth_client.revoked", admin.actor, ("oauth_client", row_id)
        )
    return client


def credentials(authorization: str | None, form: dict[str, str]) -> ClientCredentials:
    """The client's id and secret, from HTTP Basic (each form-urlencoded, RFC 6749 §2.3.1) or
    from the form's `client_id` and `client_secret`; never both."""
    in_form = "client_id" in form or "client_secret" in form
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        if in_form:
            raise TokenRequestError(
                "invalid_request", "Authenticate the client one way: HTTP Basic or the form."
            )
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TokenRequestError("invalid_client", "Malformed Basic credentials.", 401) from None
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            raise TokenRequestError("invalid_client", "Malformed Basic credentials.", 401)
        return ClientCredentials(unquote_plus(client_id), unquote_plus(secret), basic=True)
    if not form.get("client_id") or not form.get("client_secret"):
        raise TokenRequestError(
            "invalid_client",
            "Client authentication is required: HTTP Basic, or client_id and client_secret.",
            401,
        )
    return ClientCredentials(form["client_id"], form["client_secret"], basic=False)


def requested_scopes(scope: str | None, granted: frozenset[str]) -> frozenset[str]:
    """`scope` (space-separated) must be within what the client may use; absent: all of it."""
    if scope is None or not scope.strip():
        return granted
    asked = frozenset(scope.split())
    beyond = asked - granted
    if beyond:
        raise TokenRequestError(
            "invalid_scope", f"Not granted to this client: {' '.join(sorted(beyond))}."
        )
    return asked


async def grant(
    session: AsyncSession, settings: Settings, presented: ClientCredentials, scope: str | None
) -> AccessToken:
    """The client-credentials grant: an unknown client, a wrong secret and a revoked client
    are one answer (`invalid_client`)."""
    client = await session.scalar(
        select(OAuthClient).where(OAuthClient.client_id == presented.client_id[:40])
    )
    valid = client is not None and security.same_digest(presented.client_secret, client.secret_hash)
    if client is None or not valid or client.revoked_at is not None:
        raise TokenRequestError("invalid_client", "Unknown client or wrong secret.", 401)
    role = await creator_role(session, client.created_by, client.tenant_id)
    status = await session.scalar(select(Tenant.status).where(Tenant.id == client.tenant_id))
    if role is None or status is not TenantStatus.ACTIVE:
        raise TokenRequestError(
            "unauthorized_client", "This client may not be used now (its tenant or creator).", 400
        )
    usable = frozenset(client.scopes) & ROLE_SCOPES[role]
    scopes = requested_scopes(scope, usable)
    now = datetime.now(UTC)
    if (
        client.last_used_at is None
        or (now - client.last_used_at).total_seconds() > LAST_USED_GRANULARITY_SECONDS
    ):
        client.last_used_at = now
    token, lifetime = security.issue_client_token(
        settings, security.ClientClaims(client.id, client.tenant_id, scopes)
    )
    return AccessToken(access_token=token, expires_in=lifetime, scope=" ".join(sorted(scopes)))
