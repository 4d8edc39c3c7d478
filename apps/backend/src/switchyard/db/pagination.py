"""Keyset pagination, newest first, on (created_at, id): the cursor is opaque to clients."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_

from switchyard.errors import InvalidInputError

T = TypeVar("T")
R = TypeVar("R", bound=Any)


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raise ValueError for anything that is not a cursor this API gave out."""
    created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    when = datetime.fromisoformat(created)
    if when.tzinfo is None:
        raise ValueError("a cursor's time has a zone")
    try:
        when = when.astimezone(UTC)  # out of range in UTC: not a cursor this API gave out
    except OverflowError:
        raise ValueError("out of range") from None
    return when, uuid.UUID(row_id)


def parse_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The position after which a page starts, or a 422 naming `query.cursor`."""
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise InvalidInputError.on(
            "query.cursor",
            "The cursor is not one this API gave out.",
            message="invalid cursor",
            type="cursor",
        ) from None


def cut(rows: list[R], limit: int) -> tuple[list[R], str | None]:
    """The page, and the cursor of the next one (None on the last page), from `limit + 1` rows
    fetched by `newest_first`."""
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor(last.created_at, last.id)


def newest_first(
    statement: Select[T], model: Any, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> Select[T]:
    """`limit + 1` rows after `after`, so the caller knows whether a next page exists."""
    if after is not None:
        created, row_id = after
        # The first condition is implied by the second; it is there for the planner, which
        # cannot take an index range from an OR: with it, a deep page starts where the cursor
        # points in the index instead of reading every newer row of the tenant first.
        statement = statement.where(
            model.created_at <= created,
            or_(
                model.created_at < created,
                and_(model.created_at == created, model.id < row_id),
            ),
        )
    return statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
