"""Tenants: renamed by their admins; suspended, activated and given limits by the superuser."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import Plan, Tenant, TenantStatus
from switchyard.db.session import after_commit
from switchyard.errors import ConflictError, InvalidInputError, NotFoundError
from switchyard.platform import audit
from switchyard.services.container import Services
from switchyard.tenants.repository import PlansRepository, TenantsRepository
from switchyard.tenants.schemas import PlanIn, PlanOut, PlanPatch, TenantLimits


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
    session: AsyncSession,
    services: Services,
    tenant_id: uuid.UUID,
    limits: TenantLimits,
    actor: str,
) -> Tenant:
    """A tenant's plan, its own limits, fair-share cap and retention (the fields given); a
    change applies at its next request; once committed, a raised cap admits its waiting
    runs. A change of plan is in the tenant's audit log."""
    tenant = await TenantsRepository(session).get_or_404(tenant_id)
    given = limits.given()
    if "plan" in given:
        name = given.pop("plan")
        plan = await _plan_named(session, name) if name is not None else None
        if tenant.plan_id != (plan.id if plan else None):
            audit.record(
                session,
                tenant_id,
                "tenant.plan_changed",
                actor,
                ("tenant", tenant_id),
                {"from": tenant.plan, "to": name},
            )
        tenant.plan_id = plan.id if plan else None
    for field, value in given.items():
        setattr(tenant, field, value)
    await session.flush()
    await session.refresh(tenant)
    admission = services.admission
    if admission is not None and given.keys() & {"max_runs_in_flight", "limit_overrides", "plan"}:
        after_commit(session, lambda: admission.try_release(tenant_id))
    return tenant


async def _plan_named(session: AsyncSession, name: str) -> Plan:
    try:
        return await PlansRepository(session).by_name_or_404(name)
    except NotFoundError:
        raise InvalidInputError.on(
            "body.plan", f"No plan named {name!r}.", message="unknown plan", type="unknown_plan"
        ) from None


async def plans(session: AsyncSession) -> list[PlanOut]:
    return [
        _plan_out(plan, on_it) for plan, on_it in await PlansRepository(session).all_with_tenants()
    ]


async def plan(session: AsyncSession, name: str) -> PlanOut:
    repository = PlansRepository(session)
    found = await repository.by_name_or_404(name)
    return _plan_out(found, await repository.tenants_on(found.id))


def _plan_out(plan: Plan, tenants: int) -> PlanOut:
    return PlanOut.model_validate({**_columns(plan), "tenants": tenants})


def _columns(plan: Plan) -> dict[str, object]:
    return {column.key: getattr(plan, column.key) for column in Plan.__table__.columns}


async def create_plan(session: AsyncSession, body: PlanIn) -> PlanOut:
    if await session.scalar(select(Plan.id).where(Plan.name == body.name)) is not None:
        raise ConflictError(f"A plan named {body.name!r} exists.")
    created = Plan(**body.model_dump())
    session.add(created)
    try:
        await session.flush()
    except IntegrityError:  # another request created it meanwhile
        raise ConflictError(f"A plan named {body.name!r} exists.") from None
    await session.refresh(created)
    return _plan_out(created, 0)


async def change_plan(session: AsyncSession, name: str, body: PlanPatch) -> PlanOut:
    """Only the fields given change; the tenants on it see the change at their next request
    (a raised runs_in_flight admits their waiting runs within a sweep, 2 s)."""
    repository = PlansRepository(session)
    found = await repository.by_name_or_404(name, lock=True)
    for field, value in body.given().items():
        setattr(found, field, value)
    await session.flush()
    await session.refresh(found)
    return _plan_out(found, await repository.tenants_on(found.id))


async def delete_plan(session: AsyncSession, name: str) -> None:
    """409 while a tenant is on it."""
    repository = PlansRepository(session)
    found = await repository.by_name_or_404(name, lock=True)
    on_it = await repository.tenants_on(found.id)
    if on_it:
        raise ConflictError(f"{on_it} tenants are on the plan {name!r}; move them first.")
    await session.delete(found)
