"""A small HTTP/1.1 keep-alive load generator, for machines without wrk.

Usage: python -m bench.loadgen URL SECONDS CONNECTIONS [-H "Name: value"]... [--body JSON]
(with --body, each request is a POST of that JSON)
Prints: requests per second, p50 ms, p99 ms."""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import urlsplit


async def client(
    host: str, port: int, request: bytes, until: float, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if not status.startswith(b"2"):
                raise RuntimeError(f"answer {status.decode()}")
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        writer.close()


async def main(
    url: str, seconds: float, connections: int, headers: list[str], body: str | None
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    method = "GET" if body is None else "POST"
    lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", *headers]
    payload = (body or "").encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    latencies: list[float] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(client(host, port, request, until, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"{len(latencies) / elapsed:.1f} {p50:.3f} {p99:.3f}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    url, seconds, connections = arguments[0], float(arguments[1]), int(arguments[2])
    headers = [arguments[i + 1] for i, arg in enumerate(arguments) if arg == "-H"]
    bodies = [arguments[i + 1] for i, arg in enumerate(arguments) if arg == "--body"]
    asyncio.run(main(url, seconds, connections, headers, bodies[0] if bodies else None))
