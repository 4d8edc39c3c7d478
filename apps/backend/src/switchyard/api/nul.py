"""Text with U+0000 (NUL) is refused up front: PostgreSQL can store it neither in `text` nor in
`jsonb`, so it would otherwise fail deep in a request as a 500. A NUL in the path, a query
parameter or anywhere in a JSON body (keys included) is answered 422 problem+json naming the
field, before any route runs. Uploads (multipart) check their own text fields."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.api.problems import FieldError, problem_response

NUL_MESSAGE = "Text may not contain the NUL character (U+0000)."
_JSON_NUL = b"\\u0000"  # the only way JSON text can carry a NUL


def nul_in_json(document: Any, at: str = "body") -> str | None:
    """The location of the first string (or key) holding a NUL, e.g. `body.payload.note`."""
    if isinstance(document, str):
        return at if "\x00" in document else None
    if isinstance(document, dict):
        for key, value in document.items():
            if "\x00" in key:
                return f"{at}.{key.replace(chr(0), '?')}"
            found = nul_in_json(value, f"{at}.{key}")
            if found:
                return found
    if isinstance(document, list):
        for index, value in enumerate(document):
            found = nul_in_json(value, f"{at}.{index}")
            if found:
                return found
    return None


def _nul_in_url(scope: Scope) -> str | None:
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return f"query.{name.replace(chr(0), '?')}"
    return None


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value.lower()
    return False


class NulTextGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        field = _nul_in_url(scope)
        if field is None and scope["method"] in ("POST", "PUT", "PATCH") and _is_json(scope):
            received: list[Message] = []
            while True:  # bounded: the size limit outside this middleware counts the bytes
                message = await receive()
                received.append(message)
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            body = b"".join(m.get("body", b"") for m in received if m["type"] == "http.request")
            if _JSON_NUL in body:
                try:
                    field = nul_in_json(json.loads(body))
                except ValueError:
                    field = None  # not JSON after all: the route answers that
            receive = _replay(received, receive)
        if field is not None:
            answer = problem_response(
                422,
                detail=f"{NUL_MESSAGE} See `errors`.",
                code="validation_error",
                instance=scope["path"],
                errors=[FieldError(field=field, message=NUL_MESSAGE, type="string_nul")],
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
