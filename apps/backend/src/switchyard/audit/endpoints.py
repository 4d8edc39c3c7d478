"""/audit-events: what happened in the tenant, by whom, from where (owners and admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from switchyard.audit import service
from switchyard.audit.schemas import AuditEventPage
from switchyard.auth.dependencies import TenantAdminDep
from switchyard.platform.dependencies import SessionDep

router = APIRouter(prefix="/audit-events", tags=["audit"])


@router.get("")
async def list_audit_events(
    admin: TenantAdminDep,
    session: SessionDep,
    action: str | None = Query(default=None, max_length=64),
    actor: str | None = Query(
        default=None, max_length=64, description="user:<id>, api_key:<id>, oauth_client:<id>"
    ),
    since: Annotated[datetime | None, Query(description="From this time on (inclusive)")] = None,
    until: Annotated[datetime | None, Query(description="Before this time")] = None,
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=200),
) -> AuditEventPage:
    """The tenant's audit events, newest first; `next_cursor` pages on. Kept
    AUDIT_RETENTION_DAYS."""
    return await service.events(
        session,
        admin.tenant_id,
        action=action,
        actor=actor,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
