"""uvicorn's HTTP protocol (httptools) with a cap on the request head, in size and in time.

httptools has no limit on the size of a request line and headers: a client could stream
megabytes of one header and the gateway would buffer and parse them all. Here the bytes of a
request head are counted as they arrive; past the cap the connection gets 431 and is closed
at once. (A head that ends within one read of the socket is measured exactly by the request
middleware, which answers 431 as well.)

Nor does uvicorn time a head out: its keep-alive timeout stops at the first byte, so a client
sending one header byte every few seconds (slowloris) holds a connection for ever, and a few
thousand of them hold the gateway. Here a head must be complete within
REQUEST_HEADER_TIMEOUT_SECONDS of the connection, or of the first byte of a later request on
it; otherwise the connection gets 408 and is closed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from switchyard.api.problems import PROBLEM_MEDIA_TYPE

HEADERS_TOO_LARGE = "The request line and headers are larger than {limit} bytes."
HEADERS_TOO_SLOW = "The request line and headers did not arrive within {limit:g} s."


def _problem(status: int, title: str, detail: str, code: str) -> bytes:
    return json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}
    ).encode()


def headers_too_large_body(limit: int) -> bytes:
    return _problem(
        431,
        "Request Header Fields Too Large",
        HEADERS_TOO_LARGE.format(limit=limit),
        "request_header_fields_too_large",
    )


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024
    head_timeout_seconds = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._untime_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            if self._head_timer is None:  # the first byte of a later request's head
                self._time_head()
            self._head_bytes += len(data)
        super().data_received(data)
        # Still inside the head after this read (a head that ended here resets the count).
        if self._reading_head and self._head_bytes > self.max_head_bytes:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                headers_too_large_body(self.max_head_bytes),
            )

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_bytes = False, 0
        self._untime_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True

    def _time_head(self) -> None:
        self._untime_head()
        self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._too_slow)

    def _untime_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._reading_head:
            detail = HEADERS_TOO_SLOW.format(limit=self.head_timeout_seconds)
            body = _problem(408, "Request Timeout", detail, "request_timeout")
            self._refuse(408, "Request Timeout", body)

    def _refuse(self, status: int, reason: str, body: bytes) -> None:
        self._untime_head()
        if self.transport.is_closing():
            return
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\n".encode()
            + b"content-type: "
            + PROBLEM_MEDIA_TYPE.encode()
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()


def bounded_head_protocol(
    max_head_bytes: int, head_timeout_seconds: float = 10.0
) -> type[BoundedHeadProtocol]:
    """The protocol class for uvicorn's `http=`, with these caps."""
    return type(
        "BoundedHeadProtocol",
        (BoundedHeadProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_seconds": head_timeout_seconds},
    )
