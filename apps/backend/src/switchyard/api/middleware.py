"""Per-request context: request id, access log, body size limit, last-resort error answer."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.api.http_protocol import HEADERS_TOO_LARGE
from switchyard.api.metrics import request_finished, request_started
from switchyard.api.problems import problem_response
from switchyard.logging import client_address_var, request_id_var, tenant_id_var
from switchyard.services.outages import RETRY_AFTER_SECONDS, unreachable_dependency

logger = logging.getLogger("switchyard.access")
error_logger = logging.getLogger("switchyard.errors")

REQUEST_ID_HEADER = "X-Request-ID"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def head_bytes(scope: Scope) -> int:
    """The size of the request line and headers, about as they came on the wire."""
    size = len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
    return size + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class RequestBodyTooLargeError(HTTPException):
    """Raised while the body streams in; an HTTPException, so body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")


def _last_resort(error: Exception, path: str) -> Response:
    """The answer to an error no handler took: 503 with Retry-After when a service the request
    needs is unreachable (logged as a warning), otherwise 500 (logged with its stack)."""
    dependency = unreachable_dependency(error)
    if dependency is None:
        error_logger.exception("unhandled error", extra={"path": path})
        return problem_response(
            500,
            detail="An unexpected error occurred; quote the request id when reporting it.",
            code="internal_error",
            instance=path,
        )
    error_logger.warning(
        "dependency unreachable",
        extra={"path": path, "dependency": dependency, "error": repr(error)},
    )
    return problem_response(
        503,
        detail=f"{dependency[0].upper()}{dependency[1:]} is unreachable; try again shortly.",
        code="dependency_unavailable",
        instance=path,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def accepted_request_id(headers: Headers) -> str:
    """The caller's request id when it is a sane token, otherwise a new one."""
    offered = headers.get(REQUEST_ID_HEADER)
    if offered and _VALID_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def _finished(scope: Scope, status: int, elapsed: float) -> None:
    """The access log line and the request metrics."""
    logger.info(
        "request",
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "route": request_finished(scope, status, elapsed),
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        upload_body_bytes: int | None = None,
        upload_paths: tuple[str, ...] = (),
        max_head_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        # Upload routes (exact paths, POST) take bodies up to their own limit.
        self.upload_body_bytes = upload_body_bytes or max_body_bytes
        self.upload_paths = upload_paths

    def _early_refusal(self, scope: Scope, headers: Headers, limit: int) -> Response | None:
        """431 for a head over the cap, 413 for a declared length over the body limit."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            detail = RequestBodyTooLargeError(limit).detail
            return problem_response(413, detail=detail, instance=scope["path"])
        if self.max_head_bytes is None or head_bytes(scope) <= self.max_head_bytes:
            return None
        return problem_response(
            431,
            detail=HEADERS_TOO_LARGE.format(limit=self.max_head_bytes),
            code="request_header_fields_too_large",
            instance=scope["path"],
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = accepted_request_id(headers)
        token = request_id_var.set(request_id)
        address_token = client_address_var.set((scope.get("client") or (None,))[0])
        tenant_token = tenant_id_var.set(None)  # set once the caller is known
        request_started()
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        received = 0
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") in self.upload_paths
        limit = self.upload_body_bytes if upload else self.max_body_bytes

        async def receive_bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestBodyTooLargeError(limit)
            return message

        try:
            refusal = self._early_refusal(scope, headers, limit)
            if refusal is not None:
                await refusal(scope, receive, send_with_request_id)
                return
            await self.app(scope, receive_bounded, send_with_request_id)
        except RequestBodyTooLargeError as exc:
            if not response_started:
                response = problem_response(413, detail=exc.detail, instance=scope["path"])
                await response(scope, receive, send_with_request_id)
        except Exception as error:
            answer = _last_resort(error, scope["path"])  # logs it
            if not response_started:
                await answer(scope, receive, send_with_request_id)
        finally:
            _finished(scope, status, time.perf_counter() - started)
            tenant_id_var.reset(tenant_token)
            client_address_var.reset(address_token)
            request_id_var.reset(token)
