"""/api/v1/tenants: list, create, suspend (superuser); current (tenant admins)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from switchyard.auth.dependencies import OwnerDep, PrincipalDep, SuperuserDep, TenantAdminDep
from switchyard.auth.schemas import TenantSummary
from switchyard.auth.service import create_tenant
from switchyard.db.models import TenantStatus
from switchyard.errors import NotFoundError
from switchyard.platform.dependencies import ServicesDep, SessionDep
from switchyard.tasks.dependencies import SubmitterDep
from switchyard.tasks.schemas import RunRequest
from switchyard.tenants import deletion, exports, service
from switchyard.tenants.export import CONTENT_TYPE
from switchyard.tenants.repository import TenantsRepository
from switchyard.tenants.schemas import (
    DeletionIn,
    DeletionOut,
    DeletionPage,
    ExportOut,
    PlanIn,
    PlanOut,
    PlanPage,
    PlanPatch,
    TenantIn,
    TenantLimits,
    TenantPatch,
)

router = APIRouter(prefix="/tenants", tags=["tenants"])
plans_router = APIRouter(prefix="/plans", tags=["plans"])
exports_router = APIRouter(prefix="/exports", tags=["tenants"])


@router.get("")
async def list_tenants(
    _: SuperuserDep,
    session: SessionDep,
    limit: int = Query(default=100, ge=1, le=500),
    search: str | None = Query(default=None, max_length=100, description="In name or slug"),
) -> list[TenantSummary]:
    tenants = await TenantsRepository(session).oldest_first(limit, search)
    return [TenantSummary.of(tenant) for tenant in tenants]


@router.post("", status_code=status.HTTP_201_CREATED)
async def add_tenant(body: TenantIn, _: SuperuserDep, session: SessionDep) -> TenantSummary:
    return TenantSummary.of(await create_tenant(session, body.name, body.slug))


@router.get("/current")
async def current_tenant(principal: PrincipalDep, session: SessionDep) -> TenantSummary:
    return TenantSummary.of(await TenantsRepository(session).get_or_404(principal.tenant_id))


@router.patch("/current")
async def rename_current_tenant(
    body: TenantPatch, admin: TenantAdminDep, session: SessionDep
) -> TenantSummary:
    return TenantSummary.of(await service.rename(session, admin.tenant_id, body.name))


@router.post("/current/exports", status_code=status.HTTP_202_ACCEPTED)
async def request_export(
    admin: TenantAdminDep,
    session: SessionDep,
    submit: SubmitterDep,
    request: Request,
    response: Response,
) -> ExportOut:
    """Export the tenant's data: a run writes an archive (JSON Lines of every table's rows,
    secrets left out, and the stored objects); poll the export for its download link. One
    export at a time (409 while one is under way); the request is in the audit log."""
    await exports.check_none_running(session, admin.tenant_id)
    run, _ = await submit(RunRequest(task=exports.TASK, payload={}))
    exports.requested(session, admin.tenant_id, run.id, admin.actor)
    response.headers["Location"] = str(request.url_for("get_export", export_id=run.id).path)
    return exports.view(run, None)


@router.get("/current/exports/{export_id}")
async def get_export(
    export_id: uuid.UUID,
    admin: TenantAdminDep,
    session: SessionDep,
    services: ServicesDep,
    request: Request,
) -> ExportOut:
    """Its state; once it succeeded, the archive's size and contents and a signed link that
    downloads it without a token for EXPORT_LINK_MINUTES (each read gives a fresh link)."""
    base = str(request.base_url)
    return await exports.describe(session, services, base, admin.tenant_id, export_id)


@exports_router.get(
    "/download",
    response_class=StreamingResponse,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def download_export(
    session: SessionDep,
    services: ServicesDep,
    token: str = Query(min_length=1, max_length=2000, description="The link's signed token"),
) -> StreamingResponse:
    """The archive a signed link names (no bearer token: the link is the credential, until it
    expires); 404 for a link that is not genuine or has expired. The download is audited."""
    info, chunks, filename = await exports.open_download(session, services, token)
    return StreamingResponse(
        chunks,
        media_type=CONTENT_TYPE,
        headers={
            "Content-Length": str(info.size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/current/deletion", status_code=status.HTTP_202_ACCEPTED)
async def schedule_own_deletion(
    owner: OwnerDep, session: SessionDep, services: ServicesDep
) -> DeletionOut:
    """Delete this tenant and every trace of it (rows, files, vectors, graph, caches) after
    TENANT_DELETION_GRACE_DAYS; until then it works as before and the owner may cancel. Export
    its data first (`POST /tenants/current/exports`). 409 when already scheduled."""
    grace = timedelta(days=services.settings.tenant_deletion_grace_days)
    scheduled = await deletion.schedule(session, owner.tenant_id, owner.actor, grace)
    return DeletionOut.model_validate(scheduled)


@router.get("/current/deletion")
async def own_deletion(admin: TenantAdminDep, session: SessionDep) -> DeletionOut:
    """The tenant's scheduled deletion; 404 when none is."""
    found = await deletion.open_deletion(session, admin.tenant_id)
    if found is None:
        raise NotFoundError("This tenant's deletion is not scheduled.")
    return DeletionOut.model_validate(found)


@router.delete("/current/deletion")
async def cancel_own_deletion(owner: OwnerDep, session: SessionDep) -> DeletionOut:
    """Cancel the scheduled deletion (409 once it has started)."""
    return DeletionOut.model_validate(await deletion.cancel(session, owner.tenant_id, owner.actor))


@router.get("/deletions")
async def list_deletions(
    _: SuperuserDep, session: SessionDep, limit: int = Query(default=100, ge=1, le=500)
) -> DeletionPage:
    """Every tenant deletion, newest first: scheduled, cancelled, under way, and the
    tombstones of those done (the tenant's id, when, at whose request, what went)."""
    found = await deletion.tombstones(session, limit)
    return DeletionPage(items=[DeletionOut.model_validate(item) for item in found])


@router.post("/{tenant_id}/deletion", status_code=status.HTTP_202_ACCEPTED)
async def schedule_deletion(
    tenant_id: uuid.UUID,
    body: DeletionIn,
    superuser: SuperuserDep,
    session: SessionDep,
    services: ServicesDep,
) -> DeletionOut:
    """Schedule a tenant's deletion, `grace_days` from now (0: at beat's next look)."""
    days = body.grace_days
    if days is None:
        days = services.settings.tenant_deletion_grace_days
    scheduled = await deletion.schedule(session, tenant_id, superuser.actor, timedelta(days=days))
    return DeletionOut.model_validate(scheduled)


@router.delete("/{tenant_id}/deletion")
async def cancel_deletion(
    tenant_id: uuid.UUID, superuser: SuperuserDep, session: SessionDep
) -> DeletionOut:
    return DeletionOut.model_validate(await deletion.cancel(session, tenant_id, superuser.actor))


@router.post("/{tenant_id}/suspend")
async def suspend_tenant(
    tenant_id: uuid.UUID, superuser: SuperuserDep, session: SessionDep
) -> TenantSummary:
    """Its users' tokens and its API keys get 403 until it is activated again."""
    suspended = await service.set_status(
        session, tenant_id, TenantStatus.SUSPENDED, superuser.actor
    )
    return TenantSummary.of(suspended)


@router.patch("/{tenant_id}")
async def set_tenant_limits(
    tenant_id: uuid.UUID,
    body: TenantLimits,
    superuser: SuperuserDep,
    session: SessionDep,
    services: ServicesDep,
) -> TenantSummary:
    """A tenant's plan (`/plans`) and its own values of the plan's limits, applied at its
    next request; its own fair-share cap (raising it admits its waiting runs at once) and its
    retention of runs and dead letters. Only the fields given change."""
    changed = await service.set_limits(session, services, tenant_id, body, superuser.actor)
    return TenantSummary.of(changed)


@router.post("/{tenant_id}/activate")
async def activate_tenant(
    tenant_id: uuid.UUID, superuser: SuperuserDep, session: SessionDep
) -> TenantSummary:
    activated = await service.set_status(session, tenant_id, TenantStatus.ACTIVE, superuser.actor)
    return TenantSummary.of(activated)


@plans_router.get("")
async def list_plans(_: SuperuserDep, session: SessionDep) -> PlanPage:
    """Every plan, by name, with the number of tenants on it."""
    return PlanPage(items=await service.plans(session))


@plans_router.post("", status_code=status.HTTP_201_CREATED)
async def create_plan(body: PlanIn, _: SuperuserDep, session: SessionDep) -> PlanOut:
    """A named set of limits; put tenants on it with `PATCH /tenants/{id}` (`plan`). 409 for
    a name taken."""
    return await service.create_plan(session, body)


@plans_router.get("/{name}")
async def get_plan(name: str, _: SuperuserDep, session: SessionDep) -> PlanOut:
    return await service.plan(session, name)


@plans_router.patch("/{name}")
async def change_plan(name: str, body: PlanPatch, _: SuperuserDep, session: SessionDep) -> PlanOut:
    """Only the fields given change; its tenants are held to the new limits from their next
    request."""
    return await service.change_plan(session, name, body)


@plans_router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_plan(name: str, _: SuperuserDep, session: SessionDep) -> None:
    """409 while a tenant is on it."""
    await service.delete_plan(session, name)
