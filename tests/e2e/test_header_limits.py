"""A real gateway process caps request heads: oversized headers get 431 at once, and heads that
trickle in (slowloris) get 408 once REQUEST_HEADER_TIMEOUT_SECONDS is up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 2


@pytest.fixture
def gateway(start_role: Callable[..., RunningRole], database_url: URL) -> RunningRole:
    running = start_role(
        "api-gateway",
        free_port(),
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        MAX_REQUEST_HEADER_BYTES="16384",
        REQUEST_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    )
    running.wait_healthy()
    return running


def send_head(base_url: str, header_bytes: int) -> tuple[bytes, int]:
    """A GET whose one header holds `header_bytes` bytes, streamed in 64 KiB writes; what the
    server answered, and how many header bytes it let us send before it closed."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < header_bytes:
                chunk = b"a" * min(65536, header_bytes - sent)
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


@pytest.mark.parametrize("size", [20_000, 200_000, 16 * 1024 * 1024])
def test_oversized_headers_are_answered_431_quickly(gateway: RunningRole, size: int) -> None:
    answer, sent = send_head(gateway.base_url, size)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer
    assert b"request_header_fields_too_large" in answer
    assert b"connection: close" in answer.lower()
    if size > 1024 * 1024:  # refused while it streamed in, not after reading it all
        assert sent < size
    # The gateway goes on serving everyone else.
    assert httpx.get(f"{gateway.base_url}/health/live").status_code == 200


def test_headers_within_the_cap_and_large_bodies_are_served(gateway: RunningRole) -> None:
    answer, _ = send_head(gateway.base_url, 8_000)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    # A body is not a head: 1 MB of JSON reaches the route (which refuses it on its merits).
    response = httpx.post(
        f"{gateway.base_url}/api/v1/auth/login",
        content=b'{"email": "' + b"a" * 1_000_000 + b'", "password": "x"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    keep_alive = httpx.Client(base_url=gateway.base_url)
    with keep_alive:
        for _ in range(3):  # several requests on one connection
            assert keep_alive.get("/health/live").status_code == 200


async def slow_client(
    host: str, port: int, first: bytes, deadline: float, trickle: bool = True
) -> bytes:
    """Sends `first`, then (`trickle`) one more header byte every half second, until the
    server answers or closes (what it answered), or the deadline passes (b"")."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(first)
        await writer.drain()
        while time.monotonic() < deadline:
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                if not trickle:
                    continue
                writer.write(b"x")  # X-Slow: xxxx...
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                continue
            return answer
        return b""
    finally:
        writer.close()


async def test_a_hundred_heads_that_trickle_in_get_408_and_others_are_served(
    gateway: RunningRole,
) -> None:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    deadline = time.monotonic() + 10 * HEAD_TIMEOUT + 20
    trickling = [
        slow_client(host, int(port), b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ", deadline)
        for _ in range(99)
    ]
    silent = slow_client(host, int(port), b"", deadline, trickle=False)  # connects, no more
    attack = asyncio.gather(*trickling, silent)
    # Meanwhile the gateway serves everyone else.
    async with httpx.AsyncClient(base_url=gateway.base_url) as client:
        for _ in range(3):
            assert (await client.get("/health/live")).status_code == 200
    answers = await attack
    refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 408 ")]
    assert len(refused) == 100, [answer[:60] for answer in answers if answer not in refused]
    assert all(b"request_timeout" in answer for answer in refused)
    assert all(b"connection: close" in answer.lower() for answer in refused)


async def test_a_kept_alive_connection_that_stalls_in_its_next_head_gets_408(
    gateway: RunningRole,
) -> None:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert first.startswith(b"HTTP/1.1 200 ")
        length = int(
            next(
                line.split(b":")[1]
                for line in first.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        writer.write(b"GET /health/live HTTP/1.1\r\nHo")  # and nothing more
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10 * HEAD_TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    finally:
        writer.close()
