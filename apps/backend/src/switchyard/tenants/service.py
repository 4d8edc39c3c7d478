"""Tenants: renamed by their admins; suspended, activated and given limits by the superuser."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import Tenant, TenantStatus
from switchyard.db.session import after_commit
from switchyard.platform import audit
from switchyard.services.container import Services
from switchyard.tenants.repository import TenantsRepository
from switchyard.tenants.schemas import TenantLimits


async def rename(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> Tenant:
    tenant = await TenantsRepository(session).get_or_404(tenant_id)
    tenant.name = name
    await session.flush()
    return tenant


async def set_status(
    session: AsyncSession, tenant_id: uuid.UUID, status: TenantStatus, actor: str
) -> Tenant:
    """Suspended: its users' tokens and its API keys get 403 until it is activated again.
    Recorded in the tenant's own audit log (the superuser is the actor)."""
    tenant = await TenantsRepository(session).get_or_404(tenant_id)
    if tenant.status is not status:
        tenant.status = status
        action = "tenant.suspended" if status is TenantStatus.SUSPENDED else "tenant.activated"
        audit.record(session, tenant_id, action, actor, ("tenant", tenant_id))
    await session.flush()
    return tenant


async def set_limits(
    session: AsyncSession, services: Services, tenant_id: uuid.UUID, limits: TenantLimits
) -> Tenant:
    """A tenant's own fair-share cap and retention (the fields given); once committed, a
    raised cap admits its waiting runs."""
    tenant = await TenantsRepository(session).get_or_404(tenant_id)
    for field, value in limits.given().items():
        setattr(tenant, field, value)
    await session.flush()
    admission = services.admission
    if admission is not None and "max_runs_in_flight" in limits.model_fields_set:
        after_commit(session, lambda: admission.try_release(tenant_id))
    return tenant
