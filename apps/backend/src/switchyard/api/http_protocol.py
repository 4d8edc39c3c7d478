"""uvicorn's HTTP protocol (httptools) with a cap on the request head.

httptools has no limit on the size of a request line and headers: a client could stream
megabytes of one header and the gateway would buffer and parse them all. Here the bytes of a
request head are counted as they arrive; past the cap the connection gets 431 and is closed
at once. (A head that ends within one read of the socket is measured exactly by the request
middleware, which answers 431 as well.)"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from switchyard.api.problems import PROBLEM_MEDIA_TYPE

HEADERS_TOO_LARGE = "The request line and headers are larger than {limit} bytes."


def headers_too_large_body(limit: int) -> bytes:
    return json.dumps(
        {
            "type": "about:blank",
            "title": "Request Header Fields Too Large",
            "status": 431,
            "detail": HEADERS_TOO_LARGE.format(limit=limit),
            "code": "request_header_fields_too_large",
        }
    ).encode()


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still inside the head after this read (a head that ended here resets the count).
        if self._reading_head and self._head_bytes > self.max_head_bytes:
            self._refuse()

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        body = headers_too_large_body(self.max_head_bytes)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            + b"content-type: "
            + PROBLEM_MEDIA_TYPE.encode()
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()


def bounded_head_protocol(max_head_bytes: int) -> type[BoundedHeadProtocol]:
    """The protocol class for uvicorn's `http=`, with this cap."""
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"max_head_bytes": max_head_bytes})
