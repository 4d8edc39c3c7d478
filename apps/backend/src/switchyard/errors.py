"""Domain errors: each carries an HTTP status and a stable code; one handler renders them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel
from pydantic_core import ErrorDetails

NUL_MESSAGE = "Text may not contain the NUL character (U+0000)."


class FieldError(BaseModel):
    """One failing field of a request: where (`body.payload.n`), what, and a stable type."""

    field: str
    message: str
    type: str


def field_errors(errors: Iterable[ErrorDetails], *prefix: str) -> list[FieldError]:
    """pydantic's validation errors as field errors, their location after `prefix`: the one
    place the conversion is written."""
    return [
        FieldError(
            field=".".join([*prefix, *(str(part) for part in error["loc"])]),
            message=error["msg"],
            type=error["type"],
        )
        for error in errors
    ]


class SwitchyardError(Exception):
    """Base of every error a service raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # The unit of work commits, instead of rolling back, before this error is answered.
    persist_changes: ClassVar[bool] = False
    # False: a run whose task raised it fails at once, without the retries of its policy (it
    # is dead-lettered; a replay may succeed once the cause is gone: a quota that reset).
    retry_in_run: ClassVar[bool] = True

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        # Members the problem body carries besides the standard ones (a quota's figures).
        self.extensions: dict[str, Any] = {}


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
        self.retry_after = retry_after


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

    def __init__(self, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.errors = errors

    @classmethod
    def on(cls, field: str, detail: str, *, message: str, type: str) -> InvalidInputError:
        """The error of one failing `field`."""
        return cls(detail, [FieldError(field=field, message=message, type=type)])


class RoleConfigurationError(Exception):
    """A role cannot start with this configuration: one line per problem for the operator
    (every problem found at once, not one per start)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class RoleStartupError(Exception):
    """A role could not start for a reason outside its configuration; one line for the operator."""
