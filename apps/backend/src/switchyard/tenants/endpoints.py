"""/api/v1/tenants: list, create, suspend (superuser); current (tenant admins)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from switchyard.auth.endpoints import tenant_summary
from switchyard.auth.schemas import TenantSummary
from switchyard.auth.service import create_tenant
from switchyard.db.models import Tenant, TenantStatus
from switchyard.dependencies import (
    PrincipalDep,
    ServicesDep,
    SessionDep,
    SuperuserDep,
    TenantAdminDep,
)
from switchyard.errors import NotFoundError

router = APIRouter(prefix="/tenants", tags=["tenants"])


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class TenantLimits(BaseModel):
    """What the platform superuser may set on a tenant."""

    model_config = ConfigDict(extra="forbid")

    max_runs_in_flight: int | None = Field(
        ge=1,
        le=100_000,
        description="Runs of this tenant in flight at once across all workers; null: the "
        "TENANT_MAX_RUNS_IN_FLIGHT default",
    )


async def _tenant(session: SessionDep, tenant_id: uuid.UUID) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFoundError(f"No tenant {tenant_id}.")
    return tenant


@router.get("")
async def list_tenants(
    _: SuperuserDep, session: SessionDep, limit: int = Query(default=100, ge=1, le=500)
) -> list[TenantSummary]:
    tenants = await session.scalars(select(Tenant).order_by(Tenant.created_at).limit(limit))
    return [tenant_summary(tenant) for tenant in tenants]


@router.post("", status_code=status.HTTP_201_CREATED)
async def add_tenant(body: TenantIn, _: SuperuserDep, session: SessionDep) -> TenantSummary:
    return tenant_summary(await create_tenant(session, body.name, body.slug))


@router.get("/current")
async def current_tenant(principal: PrincipalDep, session: SessionDep) -> TenantSummary:
    return tenant_summary(await _tenant(session, principal.tenant_id))


@router.patch("/current")
async def rename_current_tenant(
    body: TenantPatch, admin: TenantAdminDep, session: SessionDep
) -> TenantSummary:
    tenant = await _tenant(session, admin.tenant_id)
    tenant.name = body.name
    await session.flush()
    return tenant_summary(tenant)


async def _set_status(
    session: SessionDep, tenant_id: uuid.UUID, status: TenantStatus
) -> TenantSummary:
    tenant = await _tenant(session, tenant_id)
    tenant.status = status
    await session.flush()
    return tenant_summary(tenant)


@router.post("/{tenant_id}/suspend")
async def suspend_tenant(
    tenant_id: uuid.UUID, _: SuperuserDep, session: SessionDep
) -> TenantSummary:
    """Its users' tokens and its API keys get 403 until it is activated again."""
    return await _set_status(session, tenant_id, TenantStatus.SUSPENDED)


@router.patch("/{tenant_id}")
async def set_tenant_limits(
    tenant_id: uuid.UUID,
    body: TenantLimits,
    _: SuperuserDep,
    session: SessionDep,
    services: ServicesDep,
) -> TenantSummary:
    """A tenant's own fair-share cap; raising it admits its waiting runs at once."""
    tenant = await _tenant(session, tenant_id)
    tenant.max_runs_in_flight = body.max_runs_in_flight
    await session.flush()
    summary = tenant_summary(tenant)
    await session.commit()
    if services.admission is not None:
        await services.admission.try_release(tenant_id)  # a raised cap admits at once
    return summary


@router.post("/{tenant_id}/activate")
async def activate_tenant(
    tenant_id: uuid.UUID, _: SuperuserDep, session: SessionDep
) -> TenantSummary:
    return await _set_status(session, tenant_id, TenantStatus.ACTIVE)
