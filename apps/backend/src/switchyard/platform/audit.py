"""The audit log's writing side: every domain appends its events here, in the unit of work of
the action they record (an action undone leaves no event). Who did it comes from the caller
(`Principal.actor`, or `anonymous`); the request id and the client's address from the
request being served. `details` carries names and ids, never a secret (the listed keys are
refused here, so a careless caller fails its tests rather than leaking)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from switchyard.db.models import AuditEvent
from switchyard.logging import client_address_var, request_id_var

# Every action the log records; GET /audit-events filters by these names.
ACTIONS: Final = (
    "auth.sign_in",
    "auth.sign_in_failed",
    "auth.sign_out",
    "auth.password_reset",
    "auth.email_verified",
    "invitation.sent",
    "invitation.resent",
    "invitation.accepted",
    "invitation.revoked",
    "member.role_changed",
    "member.deactivated",
    "member.reactivated",
    "member.removed",
    "member.left",
    "tenant.ownership_transferred",
    "tenant.suspended",
    "tenant.activated",
    "tenant.plan_changed",
    "tenant.export_requested",
    "tenant.export_downloaded",
    "tenant.deletion_scheduled",
    "tenant.deletion_cancelled",
    "quota.soft_limit_reached",
    "api_key.created",
    "api_key.revoked",
    "oauth_client.created",
    "oauth_client.revoked",
    "data_source.created",
    "data_source.changed",
    "data_source.deleted",
    "data_source.tested",
    "definition.created",
    "definition.changed",
    "definition.deleted",
    "workflow.created",
    "workflow.versioned",
    "workflow.deleted",
    "workflow.cancelled",
    "workflow.replayed",
    "dead_letter.replayed",
    "dead_letter.deleted",
)
ANONYMOUS: Final = "anonymous"
_SECRET_KEYS = frozenset({"password", "secret", "token", "key", "client_secret", "url"})
PURGE_BATCH: Final = 10_000


def event(
    tenant_id: uuid.UUID,
    action: str,
    actor: str,
    target: tuple[str, object] | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    leaked = _SECRET_KEYS & set(details or {})
    if leaked:
        raise ValueError(f"audit details must not carry {sorted(leaked)}")
    target_type, target_id = target if target is not None else (None, None)
    return AuditEvent(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        request_id=request_id_var.get(),
        address=client_address_var.get(),
        details=dict(details or {}),
        created_at=datetime.now(UTC),
    )


def record(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    action: str,
    actor: str,
    target: tuple[str, object] | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to the session's unit of work (written at its flush, kept if it
    commits). `target`: (its type, its id)."""
    added = event(tenant_id, action, actor, target, details)
    session.add(added)
    return added


async def record_apart(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    action: str,
    actor: str,
    target: tuple[str, object] | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append an event in a transaction of its own: for what is recorded although the request
    fails (a failed sign-in)."""
    async with sessions.begin() as session:
        session.add(event(tenant_id, action, actor, target, details))


async def purge(sessions: async_sessionmaker[AsyncSession], retention_days: int) -> int:
    """Delete events older than the retention, in batches; the number deleted. The only
    delete the table's trigger lets through (it sets switchyard.audit_purge)."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    deleted = 0
    while True:
        async with sessions.begin() as session:
            await session.execute(text("SET LOCAL switchyard.audit_purge = 'on'"))
            batch = (
                select(AuditEvent.id)
                .where(AuditEvent.created_at < cutoff)
                .limit(PURGE_BATCH)
                .scalar_subquery()
            )
            result = await session.execute(
                delete(AuditEvent)
                .where(AuditEvent.id.in_(batch))
                .execution_options(synchronize_session=False)
            )
        count = int(getattr(result, "rowcount", 0) or 0)
        deleted += count
        if count < PURGE_BATCH:
            return deleted
