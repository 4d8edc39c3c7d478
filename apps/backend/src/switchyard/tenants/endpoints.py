"""/api/v1/tenants: list, create, suspend (superuser); current (tenant admins)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, status

from switchyard.auth.dependencies import PrincipalDep, SuperuserDep, TenantAdminDep
from switchyard.auth.schemas import TenantSummary
from switchyard.auth.service import create_tenant
from switchyard.db.models import TenantStatus
from switchyard.platform.dependencies import ServicesDep, SessionDep
from switchyard.tenants import service
from switchyard.tenants.repository import TenantsRepository
from switchyard.tenants.schemas import (
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
