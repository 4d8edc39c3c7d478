"""Connection URLs of data sources: checked on input, shown redacted, and probed by a task."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

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
        return self.url.render_as_string(hide_password=True)


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
    return Connection(kind, url)


def _scrub(message: str, connection: Connection) -> str:
    password = connection.url.password
    text = message.strip().splitlines()[0] if message.strip() else ""
    if password:
        text = text.replace(str(password), "***")
    return text[:MAX_ERROR_LENGTH]


async def _postgres_version(connection: Connection, address: str, seconds: float) -> str:
    import asyncpg

    url = connection.url
    conn = await asyncpg.connect(
        host=address,
        port=connection.port,
        user=url.username,
        password=url.password,
        database=url.database or url.username,
        timeout=seconds,
        ssl=url.query.get("sslmode") not in (None, "disable"),
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


async def probe(raw: str, *, allow_local: bool, seconds: float) -> dict[str, Any]:
    """Connect once and ask the server's version; the outcome, never an exception."""
    connection = parse(raw)
    outcome: dict[str, Any] = {
        "ok": False,
        "kind": connection.kind,
        "host": connection.host,
        "port": connection.port,
    }
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
