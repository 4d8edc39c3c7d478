"""Exports of a tenant's data as the API offers them: requested by an admin (a run of
`tenants.export`, audited), read back with a signed download link, downloaded (audited)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth import security
from switchyard.db.models import RunState, TaskRun, Tenant
from switchyard.db.models.task_run import FINAL_STATES
from switchyard.errors import ConflictError, NotFoundError
from switchyard.platform import audit
from switchyard.services.container import Services
from switchyard.services.objects import ObjectInfo
from switchyard.tasks.repository import RunRepository
from switchyard.tenants.export import ExportResult
from switchyard.tenants.schemas import ExportOut

TASK: Final = "tenants.export"
LINK_EXPIRED: Final = "This download link is invalid or has expired."


async def export_run(session: AsyncSession, tenant_id: uuid.UUID, export_id: uuid.UUID) -> TaskRun:
    run = await RunRepository(session, tenant_id).get(export_id)
    if run is None or run.task != TASK:
        raise NotFoundError(f"No export {export_id}.")
    return run


async def check_none_running(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """409 while an export of the tenant is under way (the tenant's row is locked, so two
    requests at once cannot both start one)."""
    await session.execute(
        select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    )
    running = await session.scalar(
        select(TaskRun.id)
        .where(
            TaskRun.tenant_id == tenant_id, TaskRun.task == TASK, TaskRun.state.not_in(FINAL_STATES)
        )
        .limit(1)
    )
    if running is not None:
        raise ConflictError(f"An export of this tenant is under way: {running}.")


def view(run: TaskRun, link: tuple[str, datetime] | None) -> ExportOut:
    out = ExportOut(
        id=run.id,
        state=run.state,
        requested_at=run.created_at or datetime.now(UTC),  # just submitted: not read back
        requested_by=run.submitted_by,
        finished_at=run.finished_at,
        error=run.error_message
        if run.state.final and run.state is not RunState.SUCCEEDED
        else None,
    )
    if run.state is RunState.SUCCEEDED and run.result is not None:
        result = ExportResult.model_validate(run.result)
        out.size_bytes, out.tables, out.objects = result.size_bytes, result.tables, result.objects
        if link is not None:
            out.download_url, out.download_expires_at = link
    return out


def download_link(
    services: Services, base_url: str, tenant_id: uuid.UUID, export_id: uuid.UUID
) -> tuple[str, datetime]:
    """A signed link to GET the archive without a token, and when it stops working."""
    settings = services.settings
    expires_at = datetime.now(UTC) + timedelta(minutes=settings.export_link_minutes)
    token = security.issue_export_token(settings, tenant_id, export_id, expires_at)
    return f"{base_url.rstrip('/')}/api/v1/exports/download?token={token}", expires_at


async def describe(
    session: AsyncSession,
    services: Services,
    base_url: str,
    tenant_id: uuid.UUID,
    export_id: uuid.UUID,
) -> ExportOut:
    run = await export_run(session, tenant_id, export_id)
    link = None
    if run.state is RunState.SUCCEEDED:
        link = download_link(services, base_url, tenant_id, export_id)
    return view(run, link)


def requested(
    session: AsyncSession, tenant_id: uuid.UUID, export_id: uuid.UUID, actor: str
) -> None:
    audit.record(session, tenant_id, "tenant.export_requested", actor, ("export", export_id))


async def open_download(
    session: AsyncSession, services: Services, token: str
) -> tuple[ObjectInfo, AsyncIterator[bytes], str]:
    """The archive a genuine, unexpired link names (its description, its content and a file
    name); 404 for any other link, or once the export or its archive is gone. The download is
    in the tenant's audit log."""
    try:
        tenant_id, export_id = security.read_export_token(services.settings, token)
    except security.InvalidTokenError:
        raise NotFoundError(LINK_EXPIRED) from None
    try:
        run = await export_run(session, tenant_id, export_id)
    except NotFoundError:
        raise NotFoundError(LINK_EXPIRED) from None
    if run.state is not RunState.SUCCEEDED or run.result is None:
        raise NotFoundError(LINK_EXPIRED)
    key = ExportResult.model_validate(run.result).key
    try:
        info, chunks = await services.objects.get(tenant_id, key)
    except NotFoundError:
        raise NotFoundError("This export's archive is gone (a newer export replaced it).") from None
    await audit.record_apart(
        services.database_sessions,
        tenant_id,
        "tenant.export_downloaded",
        audit.ANONYMOUS,
        ("export", export_id),
        {"via": "signed link"},
    )
    return info, chunks, f"switchyard-export-{export_id}.tar.gz"
