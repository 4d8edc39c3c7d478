"""Exception handlers: every error, expected or not, leaves as problem+json."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from switchyard.api.problems import problem_response
from switchyard.errors import InvalidInputError, SwitchyardError, field_errors

VALIDATION_DETAIL = "The request is not valid; see `errors` for each failing field."


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    return problem_response(
        422,
        detail=VALIDATION_DETAIL,
        code="validation_error",
        instance=request.url.path,
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem_response(
        exc.status_code,
        detail=detail,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SwitchyardError)
    errors = exc.errors if isinstance(exc, InvalidInputError) else None
    return problem_response(
        exc.status,
        detail=exc.detail,
        code=exc.code,
        title=exc.title,
        instance=request.url.path,
        errors=errors,
        headers=exc.headers,
        extensions=exc.extensions,
    )


def install_exception_handlers(app: FastAPI) -> None:
    """Unhandled exceptions are answered by `RequestContextMiddleware`, not here."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SwitchyardError, _domain_error)
