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

from switchyard.datasources.guard import Reach, RefusedHostError, UnresolvableHostError, resolve

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


# Where a driver's message may carry a credential: a URL's user info, and key=value or
# key: value forms of a password-like key. Redacted by form, whatever the value: replacing
# the password's own text wherever it occurs would garble messages (a short password's
# letters) and tell, by what was hidden, what the password holds.
_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"(?P<head>\b[\w-]*(?:pass|pwd|secret|token|key)[\w-]*\s*[=:]\s*)(?:'[^']*'|\"[^\"]*\"|\S+)",
    re.IGNORECASE,
)


def _scrub(message: str) -> str:
    text = message.strip().splitlines()[0] if message.strip() else ""
    text = _USERINFO.sub(lambda m: f"{m['head']}{HIDDEN}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['head']}{HIDDEN}", text)
    return text[:MAX_ERROR_LENGTH]


def no_server(connection: Connection, seconds: float) -> str:
    name = "PostgreSQL" if connection.kind == "postgresql" else "MySQL/MariaDB"
    return (
        f"no {name} server answered at {connection.host}:{connection.port} within {seconds:g} s "
        "(nothing listens, a firewall drops it, or another service is there)"
    )


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


def _answered(error: Exception) -> bool:
    """Whether `error` is the server's own answer (wrong password, no such database), as
    opposed to no server answering: refused, reset, silent or speaking another protocol."""
    import asyncpg
    from asyncmy.errors import MySQLError

    if isinstance(error, asyncpg.PostgresError):  # class 08, connection exceptions: not an answer
        return not isinstance(error, asyncpg.PostgresConnectionError)
    code = error.args[0] if isinstance(error, MySQLError) and error.args else None
    return isinstance(code, int) and code < CLIENT_ERRORS


# MySQL's client-side error codes start here (CR_*: 2003 can't connect, 2013 lost, ...).
CLIENT_ERRORS: Final = 2000


async def probe(raw: str, *, reach: Reach, seconds: float) -> ProbeOutcome:
    """Connect once and ask the server's version; the outcome, never an exception.

    A port that refuses, resets, stays silent or speaks another protocol is reported alike
    ("no server answered"), so that a test cannot tell an open port from a closed one; only
    a server's own answer (a wrong password, say) is passed on, redacted."""
    connection = parse(raw)
    outcome = ProbeOutcome(
        ok=False, kind=connection.kind, host=connection.host, port=connection.port
    )
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            address = await resolve(connection.host, connection.port, reach=reach)
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
    except Exception as exc:  # any failure to connect is the outcome being reported
        if isinstance(exc, TimeoutError) or not _answered(exc):
            outcome["error"] = no_server(connection, seconds)
        else:
            outcome["error"] = f"{type(exc).__name__}: {_scrub(str(exc))}"
    else:
        outcome["ok"] = True
        outcome["server_version"] = version
    outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return outcome
