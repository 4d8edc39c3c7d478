"""Connection URLs of data sources: checked on input, shown redacted, and probed by a task."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from typing import Final, Literal, NotRequired

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from typing_extensions import TypedDict

from switchyard.datasources.guard import RefusedHostError, UnresolvableHostError, resolve

Kind = Literal["postgresql", "mysql"]
KINDS: Final[dict[str, Kind]] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
DEFAULT_PORTS: Final[dict[Kind, int]] = {"postgresql": 5432, "mysql": 3306}
MAX_URL_LENGTH: Final = 2048
MAX_ERROR_LENGTH: Final = 300
# Query parameters whose values are credentials: shown as *** like the password.
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)
HIDDEN: Final = "***"


@dataclass(frozen=True)
class Connection:
    kind: Kind
    url: URL

    @property
    def host(self) -> str:
        assert self.url.host is not None
        return self.url.host

    @property
    def port(self) -> int:
        return self.url.port or DEFAULT_PORTS[self.kind]

    @property
    def redacted(self) -> str:
        query = {
            name: HIDDEN if SECRET_PARAMETER.search(name) else value
            for name, value in self.url.query.items()
        }
        shown = self.url.set(query=query).render_as_string(hide_password=True)
        return shown.replace("%2A%2A%2A", HIDDEN)  # the query's *** comes back URL-quoted

    def secrets(self) -> list[str]:
        """Every credential the URL holds: the password and secret query values."""
        found = [str(self.url.password)] if self.url.password else []
        for name, value in self.url.query.items():
            if SECRET_PARAMETER.search(name):
                found.extend([value] if isinstance(value, str) else list(value))
        return [secret for secret in found if secret]


def parse(raw: str) -> Connection:
    """A PostgreSQL or MySQL/MariaDB URL with a host and a user; messages never echo it."""
    if len(raw) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ValueError("is not a database URL like postgresql://user:pw@host/db") from None
    kind = KINDS.get(url.drivername.split("+")[0])
    if kind is None:
        raise ValueError("must be a postgresql:// or mysql:// (MariaDB) URL")
    if not url.host:
        raise ValueError("must name a host")
    if not url.username:
        raise ValueError("must name a user")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError("must have a port from 1 to 65535")
    return Connection(kind, url)


def _scrub(message: str, connection: Connection) -> str:
    text = message.strip().splitlines()[0] if message.strip() else ""
    for secret in connection.secrets():
        text = text.replace(secret, HIDDEN)
    return text[:MAX_ERROR_LENGTH]


def _tls(sslmode: str | None) -> ssl.SSLContext | bool:
    """A TLS context of our own: asyncpg would otherwise read PGSSL* variables and the
    worker's ~/.postgresql client certificate, and present them to the tenant's host. The
    connection goes to a checked address, not the name, so no host name is verified."""
    if sslmode in (None, "disable", "allow", "prefer"):
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    if sslmode not in ("verify-ca", "verify-full"):
        context.verify_mode = ssl.CERT_NONE
    return context


async def _postgres_version(connection: Connection, address: str, seconds: float) -> str:
    import asyncpg

    url = connection.url
    sslmode = url.query.get("sslmode")
    # Only the stored credentials: a password of "" (never None) keeps asyncpg from reading
    # PGPASSWORD or a .pgpass file of the worker's and sending it to the tenant's host.
    conn = await asyncpg.connect(
        host=address,
        port=connection.port,
        user=url.username,
        password=str(url.password or ""),
        database=url.database or url.username,
        timeout=seconds,
        ssl=_tls(sslmode if isinstance(sslmode, str) else None),
        server_settings={"application_name": "switchyard-connection-test"},
    )
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close(timeout=seconds)


async def _mysql_version(connection: Connection, address: str, seconds: float) -> str:
    import asyncmy

    url = connection.url
    conn = await asyncmy.connect(
        host=address,
        port=connection.port,
        user=url.username or "",
        password=str(url.password or ""),
        database=url.database,
        connect_timeout=max(1, int(seconds)),
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT VERSION()")
            row = await cursor.fetchone()
        return str(row[0])
    finally:
        conn.close()


class ProbeOutcome(TypedDict):
    """What one connectivity test found (the result of datasources.test_connection)."""

    ok: bool
    kind: Kind
    host: str
    port: int
    latency_ms: NotRequired[float]
    address: NotRequired[str]
    server_version: NotRequired[str]
    error: NotRequired[str]
    refused: NotRequired[bool]


async def probe(raw: str, *, allow_local: bool, seconds: float) -> ProbeOutcome:
    """Connect once and ask the server's version; the outcome, never an exception."""
    connection = parse(raw)
    outcome = ProbeOutcome(
        ok=False, kind=connection.kind, host=connection.host, port=connection.port
    )
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            address = await resolve(connection.host, connection.port, allow_local=allow_local)
            outcome["address"] = address
            version = await (
                _postgres_version(connection, address, seconds)
                if connection.kind == "postgresql"
                else _mysql_version(connection, address, seconds)
            )
    except RefusedHostError as exc:
        outcome["error"] = str(exc)
        outcome["refused"] = True
    except UnresolvableHostError as exc:
        outcome["error"] = str(exc)
    except TimeoutError:
        outcome["error"] = f"no answer within {seconds:g} s"
    except Exception as exc:  # any failure to connect is the outcome being reported
        outcome["error"] = f"{type(exc).__name__}: {_scrub(str(exc), connection)}"
    else:
        outcome["ok"] = True
        outcome["server_version"] = version
    outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return outcome
