"""Secrets: password hashes, signed access tokens, refresh tokens and API keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final

import jwt
from pwdlib import PasswordHash

from switchyard.settings import Settings

_passwords = PasswordHash.recommended()


@cache
def _dummy_hash() -> str:
    """A hash to verify against when the account is unknown, so that answering takes as long
    as for a wrong password. Made on first use: hashing costs ~0.1 s, not worth paying at
    every process start."""
    return _passwords.hash("switchyard-timing-equaliser")


API_KEY_MARKER = "sy_"
CLIENT_ID_MARKER = "syc_"
CLIENT_SECRET_MARKER = "sycs_"  # noqa: S105 - a prefix, for secret scanners
ACCESS = "access"
CLIENT = "client"
CONSOLE = "console"
EXPORT = "export"
CONSOLE_COOKIE = "switchyard_console"
CSRF_HEADER = "X-CSRF-Token"


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        _passwords.verify(password, _dummy_hash())
        return False
    return bool(_passwords.verify(password, password_hash))


def digest(secret: str) -> str:
    """SHA-256 of a high-entropy secret (keys and refresh tokens, not passwords)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(secret: str, expected: str) -> bool:
    return hmac.compare_digest(digest(secret), expected)


@dataclass(frozen=True)
class AccessClaims:
    """What an access token says. Role and superuser are for the client's information only:
    the gateway reads both from the database on every request."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    superuser: bool
    family_id: uuid.UUID  # the refresh family: revoking it ends the access tokens it issued


def _signed(settings: Settings, claims: dict[str, Any], minutes: int) -> tuple[str, int]:
    """`claims` signed with the registered ones (issuer, audience, times, a unique id), and
    the token's lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=minutes)
    payload: dict[str, Any] = {
        **claims,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(payload, settings.signing_secret(), settings.jwt_algorithm)
    return token, int(lifetime.total_seconds())


def _user_claims(claims: AccessClaims, typ: str) -> dict[str, Any]:
    return {
        "sub": str(claims.user_id),
        "tid": str(claims.tenant_id),
        "role": claims.role,
        "su": claims.superuser,
        "fam": str(claims.family_id),
        "typ": typ,
    }


def issue_access_token(settings: Settings, claims: AccessClaims) -> tuple[str, int]:
    """A signed token and its lifetime in seconds."""
    return _signed(settings, _user_claims(claims, ACCESS), settings.access_token_minutes)


def issue_console_token(settings: Settings, claims: AccessClaims) -> tuple[str, int]:
    """The console's session cookie: a user's claims for CONSOLE_SESSION_HOURS, of a type
    accepted only from that cookie (never as a bearer token, nor a bearer token from it)."""
    return _signed(settings, _user_claims(claims, CONSOLE), settings.console_session_hours * 60)


def csrf_token(settings: Settings, family_id: uuid.UUID) -> str:
    """The console session's anti-forgery token: derived from its sign-in, so only a page that
    could read the session's own answers knows it (never stored, never in a cookie)."""
    mac = hmac.new(
        settings.signing_secret().encode(), f"csrf:{family_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@dataclass(frozen=True)
class ClientClaims:
    """What an access token of the client-credentials grant says: the OAuth client (its row's
    id), its tenant and the scopes granted. The client's row is read on every request, so a
    revoked client's tokens stop at once."""

    client_id: uuid.UUID
    tenant_id: uuid.UUID
    scopes: frozenset[str]


def issue_client_token(settings: Settings, claims: ClientClaims) -> tuple[str, int]:
    return _signed(
        settings,
        {
            "sub": str(claims.client_id),
            "tid": str(claims.tenant_id),
            "scope": " ".join(sorted(claims.scopes)),
            "typ": CLIENT,
        },
        settings.oauth_token_minutes,
    )


class InvalidTokenError(Exception):
    pass


def _decode(settings: Settings, token: str, audience: str, *required: str) -> dict[str, Any]:
    """The claims of a token signed with the settings' secret and algorithm, for `audience`,
    unexpired, with the registered claims and `required`."""
    claims: dict[str, Any] = jwt.decode(
        token,
        settings.signing_secret(),
        algorithms=[settings.jwt_algorithm],
        issuer=settings.jwt_issuer,
        audience=audience,
        options={"require": ["exp", "sub", "iss", "aud", *required]},
    )
    return claims


def read_token(
    settings: Settings, token: str, *, console: bool = False
) -> AccessClaims | ClientClaims:
    """Verify signature, algorithm (fixed by settings), expiry, issuer and audience; a user's
    access token or an OAuth client's, or with `console` only a console session's."""
    try:
        payload = _decode(settings, token, settings.jwt_audience, "iat")
        if console != (payload.get("typ") == CONSOLE):
            raise InvalidTokenError("a console session is read from its cookie alone")
        if payload.get("typ") == CLIENT:
            return ClientClaims(
                client_id=uuid.UUID(payload["sub"]),
                tenant_id=uuid.UUID(payload["tid"]),
                scopes=frozenset(str(payload["scope"]).split()),
            )
        if payload.get("typ") not in (ACCESS, CONSOLE):
            raise InvalidTokenError("not an access token")
        return AccessClaims(
            user_id=uuid.UUID(payload["sub"]),
            tenant_id=uuid.UUID(payload["tid"]),
            role=str(payload["role"]),
            superuser=bool(payload.get("su", False)),
            family_id=uuid.UUID(str(payload["fam"])),
        )
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise InvalidTokenError(str(exc)) from None


EXPORT_AUDIENCE: Final = "export-download"


def issue_export_token(
    settings: Settings, tenant_id: uuid.UUID, export_id: uuid.UUID, expires_at: datetime
) -> str:
    """The download link's token of a tenant's export: signed, expiring, of an audience of its
    own (never accepted as an access token, nor an access token as it)."""
    payload = {
        "sub": str(export_id),
        "tid": str(tenant_id),
        "typ": EXPORT,
        "iss": settings.jwt_issuer,
        "aud": f"{settings.jwt_audience}:{EXPORT_AUDIENCE}",
        "iat": datetime.now(UTC),
        "exp": expires_at,
    }
    return jwt.encode(payload, settings.signing_secret(), settings.jwt_algorithm)


def read_export_token(settings: Settings, token: str) -> tuple[uuid.UUID, uuid.UUID]:
    """(tenant id, export id) of a genuine, unexpired download token."""
    try:
        payload = _decode(settings, token, f"{settings.jwt_audience}:{EXPORT_AUDIENCE}", "tid")
        if payload.get("typ") != EXPORT:
            raise InvalidTokenError("not an export's token")
        return uuid.UUID(str(payload["tid"])), uuid.UUID(str(payload["sub"]))
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise InvalidTokenError(str(exc)) from None


def new_refresh_secret(token_id: uuid.UUID) -> tuple[str, str]:
    """The refresh token handed out (`id.secret`) and the digest stored."""
    secret = secrets.token_urlsafe(32)
    return f"{token_id}.{secret}", digest(secret)


def successor_refresh_secret(settings: Settings, token: str) -> tuple[uuid.UUID, str, str]:
    """The refresh token that rotating `token` hands out: (its id, the token, its digest).

    Derived from the presented token and the signing secret, so that a refresh presented again
    within REFRESH_REUSE_SECONDS (a double submit, a retry after a lost answer) can be answered
    with the same successor, which only the database's digest otherwise knows. Without the
    signing secret nobody derives a successor from a token, however old."""
    key = settings.signing_secret().encode()

    def derived(part: str) -> bytes:
        return hmac.new(key, f"refresh-successor:{part}:{token}".encode(), hashlib.sha256).digest()

    token_id = uuid.UUID(bytes=derived("id")[:16], version=4)
    secret = base64.urlsafe_b64encode(derived("secret")).rstrip(b"=").decode()
    return token_id, f"{token_id}.{secret}", digest(secret)


def split_refresh_token(token: str) -> tuple[uuid.UUID, str] | None:
    token_id, _, secret = token.partition(".")
    try:
        return uuid.UUID(token_id), secret
    except ValueError:
        return None


def new_api_key() -> tuple[str, str, str]:
    """(the key shown once, its lookup prefix, the digest stored)."""
    prefix = secrets.token_hex(5)
    secret = secrets.token_urlsafe(32)
    return f"{API_KEY_MARKER}{prefix}_{secret}", prefix, digest(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(API_KEY_MARKER):
        return None
    prefix, _, secret = key[len(API_KEY_MARKER) :].partition("_")
    if len(prefix) != 10 or not secret:
        return None
    return prefix, secret


def new_client_credentials() -> tuple[str, str, str]:
    """(the public client id, the secret shown once, the digest stored)."""
    secret = f"{CLIENT_SECRET_MARKER}{secrets.token_urlsafe(32)}"
    return f"{CLIENT_ID_MARKER}{secrets.token_hex(8)}", secret, digest(secret)


def link_token(settings: Settings, purpose: str, token_id: uuid.UUID, nonce: str = "") -> str:
    """The token of a one-time link (`<id>.<secret>`). The secret is derived from the signing
    secret, the purpose, the id and a nonce, so that the worker that sends the email can put it
    in the link without the secret ever being in a task's payload; only its digest is stored."""
    mac = hmac.new(
        settings.signing_secret().encode(),
        f"link:{purpose}:{token_id}:{nonce}".encode(),
        hashlib.sha256,
    ).digest()
    secret = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return f"{token_id}.{secret}"


def link_digest(token: str) -> str:
    return digest(token.partition(".")[2])


def split_link_token(token: str) -> tuple[uuid.UUID, str] | None:
    """(id, secret) of a link token, or None when it is not one."""
    found = split_refresh_token(token)
    if found is None or not 20 <= len(found[1]) <= 64:
        return None
    return found
