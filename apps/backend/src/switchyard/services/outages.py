"""Telling a dependency outage from a bug: an error raised because a server the request needs
(PostgreSQL, Redis, ...) cannot be reached is answered 503 with `Retry-After`, not 500.

What counts as unreachable: a connection refused, reset or timed out, a host that does not
resolve, SQLAlchemy's own word that the connection was lost (`connection_invalidated`) or that
no pooled connection came free in time, PostgreSQL saying it is shutting down, starting up or
in recovery, and the Redis client's connection and timeout errors.
A query that fails for another reason (a constraint, bad SQL) stays a 500: that is a bug."""

from __future__ import annotations

import socket
import traceback
from collections.abc import Iterator

import asyncpg
from redis import exceptions as redis_errors
from sqlalchemy import exc as sqlalchemy_errors

RETRY_AFTER_SECONDS = "5"
# PostgreSQL's own words that it cannot serve now: connection exceptions (class 08), and a
# server shutting down, starting up, in recovery or stopped by an administrator (57P01-03),
# or out of connection slots (53300). A cancelled statement (57014) is not among them.
_POSTGRES_UNAVAILABLE = ("08", "57P01", "57P02", "57P03", "53300")

# The package whose frame raised the error names the dependency (innermost frame first).
_PACKAGES = (
    ("asyncpg", "the database"),
    ("sqlalchemy", "the database"),
    ("asyncmy", "the database"),
    ("redis", "Redis"),
    ("neo4j", "the graph database"),
    ("minio", "object storage"),
    ("urllib3", "object storage"),
    ("chromadb", "the vector store"),
    ("kombu", "the task broker"),
    ("amqp", "the task broker"),
    ("httpx", "an upstream service"),
    ("httpcore", "an upstream service"),
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _named_by_traceback(error: BaseException) -> str | None:
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        for package, name in _PACKAGES:
            if f"/{package}/" in frame.filename.replace("\\", "/"):
                return name
    return None


def unreachable_dependency(error: BaseException) -> str | None:
    """The dependency an error says is unreachable ("the database", "Redis", ...), or None
    when the error is not an outage."""
    for cause in _chain(error):
        if isinstance(cause, sqlalchemy_errors.DBAPIError) and cause.connection_invalidated:
            return "the database"
        if isinstance(cause, sqlalchemy_errors.TimeoutError):  # the pool stayed exhausted
            return "the database"
        if isinstance(cause, redis_errors.ConnectionError | redis_errors.TimeoutError):
            return "Redis"
        if isinstance(cause, asyncpg.PostgresError) and str(
            getattr(cause, "sqlstate", "") or ""
        ).startswith(_POSTGRES_UNAVAILABLE):
            return "the database"
        if isinstance(cause, ConnectionError | TimeoutError | socket.gaierror):
            return _named_by_traceback(cause) or "a service this request needs"
        if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
            # e.g. "Multiple exceptions: ..." when every address of a host refused
            named = _named_by_traceback(cause)
            if named is not None:
                return named
    return None
