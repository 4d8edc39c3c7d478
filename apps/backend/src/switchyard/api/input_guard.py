"""Input PostgreSQL or Python cannot hold is refused up front, as 422 problem+json naming the
field, before any route runs (it would otherwise fail deep in a request as a 500):

- U+0000 (NUL) in the path, a query parameter or a JSON body (keys included): PostgreSQL can
  store it neither in `text` nor in `jsonb`. Uploads (multipart) check their own text fields.
- JSON numbers that are not finite (`NaN`, `Infinity`, `1e400`): JSON has no such values and
  `jsonb` refuses them.
- JSON nested deeper than MAX_JSON_DEPTH: parsers, validators and encoders recurse."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.api.problems import problem_response
from switchyard.errors import NUL_MESSAGE, FieldError

NON_FINITE_MESSAGE = "Numbers must be finite (no NaN, Infinity or values beyond 1.8e308)."
MAX_JSON_DEPTH: Final = 64
DEPTH_MESSAGE = f"JSON may be nested at most {MAX_JSON_DEPTH} levels deep."

_JSON_NUL = b"\\u0000"  # the only way JSON text can carry a NUL
# Cheap byte checks that decide whether a body needs to be parsed here at all.
_MAYBE_NON_FINITE = re.compile(rb"NaN|Infinity|[0-9][eE][+-]?[0-9]{3}")


class _NonFinite:
    """Where the parser met a number that is not finite."""


_NON_FINITE = _NonFinite()


def _float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NON_FINITE


def _constant(_: str) -> _NonFinite:
    return _NON_FINITE


def refusal_in_json(document: Any, at: str = "body") -> FieldError | None:
    """The first value (or key) that cannot be stored, e.g. `body.payload.note`. Walks with a
    stack of its own: no recursion, however deep the document."""
    stack: list[tuple[Any, str, int]] = [(document, at, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return FieldError(field=where, message=NUL_MESSAGE, type="string_nul")
        elif value is _NON_FINITE:
            return FieldError(field=where, message=NON_FINITE_MESSAGE, type="finite_number")
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return FieldError(field=where, message=DEPTH_MESSAGE, type="too_deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            children = []
            for key, child in items:
                if isinstance(key, str) and "\x00" in key:
                    named = f"{where}.{key.replace(chr(0), '?')}"
                    return FieldError(field=named, message=NUL_MESSAGE, type="string_nul")
                children.append((child, f"{where}.{key}", depth + 1))
            stack.extend(reversed(children))
    return None


def refusal_in_body(body: bytes) -> FieldError | None:
    """What in a JSON body cannot be stored, or None (also for a body that is not JSON: the
    route answers that)."""
    needs_parse = (
        _JSON_NUL in body
        or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
        or _MAYBE_NON_FINITE.search(body) is not None
    )
    if not needs_parse:
        return None
    try:
        document = json.loads(body, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        return FieldError(field="body", message=DEPTH_MESSAGE, type="too_deep")
    except ValueError:
        return None
    return refusal_in_json(document)


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


class InputGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        in_url = _nul_in_url(scope)
        refused = (
            FieldError(field=in_url, message=NUL_MESSAGE, type="string_nul") if in_url else None
        )
        if refused is None and scope["method"] in ("POST", "PUT", "PATCH") and _is_json(scope):
            received: list[Message] = []
            while True:  # bounded: the size limit outside this middleware counts the bytes
                message = await receive()
                received.append(message)
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            body = b"".join(m.get("body", b"") for m in received if m["type"] == "http.request")
            refused = refusal_in_body(body)
            receive = _replay(received, receive)
        if refused is not None:
            answer = problem_response(
                422,
                detail=f"{refused.message} See `errors`.",
                code="validation_error",
                instance=scope["path"],
                errors=[refused],
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
