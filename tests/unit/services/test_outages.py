"""Which errors are an unreachable dependency (answered 503, runs handed back) and which are
bugs (500, runs failed as before)."""

from __future__ import annotations

import asyncio
import socket

import asyncpg.exceptions as pg
import pytest
from redis import exceptions as redis_errors
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from switchyard.services.outages import unreachable_dependency


def during(error: BaseException, context: BaseException) -> BaseException:
    """`error` raised while handling `context`, as Python chains them."""
    error.__context__ = context
    return error


def wrapped(cause: BaseException) -> DBAPIError:
    """As SQLAlchemy's asyncpg dialect raises a server error: a DBAPIError from it."""
    error = DBAPIError("SELECT 1", {}, Exception(str(cause)))
    error.__cause__ = cause
    return error


def lost_connection() -> DBAPIError:
    error = DBAPIError("SELECT 1", {}, Exception("connection was closed in the middle"))
    error.connection_invalidated = True
    return error


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (lost_connection(), "the database"),
        (PoolTimeoutError("QueuePool limit reached"), "the database"),
        (redis_errors.ConnectionError("Error 111 connecting"), "Redis"),
        (redis_errors.TimeoutError("Timeout reading from socket"), "Redis"),
        (ConnectionRefusedError(111, "Connect call failed"), "a service this request needs"),
        (TimeoutError(), "a service this request needs"),
        (socket.gaierror(-2, "Name or service not known"), "a service this request needs"),
        # wrapped: the cause or the context is what tells
        (during(RuntimeError("while saving"), ConnectionResetError(104, "reset")), "a service"),
        # a restarting PostgreSQL, in its own words, as SQLAlchemy raises them
        (wrapped(pg.CannotConnectNowError("the database system is shutting down")), "the data"),
        (wrapped(pg.CannotConnectNowError("the database system is starting up")), "the data"),
        (wrapped(pg.CannotConnectNowError("the database system is in recovery mode")), "the d"),
        (
            wrapped(pg.AdminShutdownError("terminating connection due to administrator command")),
            "the",
        ),
        (wrapped(pg.CrashShutdownError("terminating connection because of crash")), "the data"),
        (wrapped(pg.TooManyConnectionsError("sorry, too many clients already")), "the data"),
        (wrapped(pg.ConnectionFailureError("connection failure")), "the database"),
    ],
)
def test_unreachable_dependencies_are_told(error: BaseException, dependency: str) -> None:
    named = unreachable_dependency(error)
    assert named is not None
    assert named.startswith(dependency)


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT", {}, Exception("duplicate key value")),
        ProgrammingError("SELEC", {}, Exception("syntax error")),
        DBAPIError("SELECT 1", {}, Exception("division by zero")),  # not invalidated
        ValueError("bad"),
        KeyError("missing"),
        FileNotFoundError(2, "No such file"),
        redis_errors.ResponseError("WRONGTYPE"),
        wrapped(pg.QueryCanceledError("canceling statement due to statement timeout")),
        wrapped(pg.UniqueViolationError("duplicate key value violates unique constraint")),
    ],
)
def test_bugs_are_not_outages(error: BaseException) -> None:
    assert unreachable_dependency(error) is None


async def test_a_refused_connection_is_named_by_the_client_that_made_it() -> None:
    import asyncpg

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match=r"Connect call failed|Multiple exceptions") as refused:
        await asyncio.wait_for(asyncpg.connect(host="127.0.0.1", port=port), 5)
    assert unreachable_dependency(refused.value) == "the database"
