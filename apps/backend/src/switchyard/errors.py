"""Domain errors: each carries an HTTP status and a stable code; one handler renders them."""

from __future__ import annotations

from typing import ClassVar


class SwitchyardError(Exception):
    """Base of every error a service raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # The unit of work commits, instead of rolling back, before this error is answered.
    persist_changes: ClassVar[bool] = False

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotFoundError(SwitchyardError):
    status = 404
    code = "not_found"
    title = "Not found"


class UnauthorizedError(SwitchyardError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class TokenReuseError(UnauthorizedError):
    """A rotated refresh token came back: its whole family is revoked, and that must stick."""

    persist_changes = True


class ForbiddenError(SwitchyardError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class TooManyRequestsError(SwitchyardError):
    status = 429
    code = "rate_limited"
    title = "Too Many Requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ConflictError(SwitchyardError):
    status = 409
    code = "conflict"
    title = "Conflict"


class ServiceUnavailableError(SwitchyardError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"


class InvalidInputError(SwitchyardError):
    """Input that parsed but breaks a rule; `errors` names each failing field."""

    status = 422
    code = "validation_error"
    title = "Unprocessable Content"

    def __init__(self, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(detail)
        self.errors = errors
