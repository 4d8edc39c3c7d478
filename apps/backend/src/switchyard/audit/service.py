"""A tenant's audit events, newest first, filtered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.audit.repository import AuditRepository
from switchyard.audit.schemas import AuditEventOut, AuditEventPage
from switchyard.errors import InvalidInputError
from switchyard.platform.audit import ACTIONS


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


async def events(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    action: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> AuditEventPage:
    if action is not None and action not in ACTIONS:
        raise InvalidInputError.on(
            "query.action",
            f"Unknown action {action!r}.",
            message="one of " + ", ".join(ACTIONS),
            type="enum",
        )
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and since >= until:
        raise InvalidInputError.on(
            "query.until", "until must be after since.", message="after since", type="range"
        )
    repository = AuditRepository(session, tenant_id)
    rows, next_cursor = await repository.page(
        repository.filtered(action, actor, since, until), cursor, limit
    )
    return AuditEventPage(
        items=[AuditEventOut.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=next_cursor,
    )
