"""Queries of tenants (a shared model: the platform's, not one tenant's)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import Plan, Tenant
from switchyard.errors import NotFoundError


class TenantsRepository:
    """The tenants table itself (not one tenant's rows: see `db.repository.TenantRepository`)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_or_404(self, tenant_id: uuid.UUID) -> Tenant:
        tenant = await self.session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFoundError(f"No tenant {tenant_id}.")
        return tenant

    async def oldest_first(self, limit: int, search: str | None = None) -> list[Tenant]:
        """The oldest `limit` tenants, or those whose name or slug contains `search`."""
        statement = select(Tenant).order_by(Tenant.created_at).limit(limit)
        if search:
            pattern = (
                "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            statement = statement.where(
                Tenant.name.ilike(pattern, escape="\\") | Tenant.slug.ilike(pattern, escape="\\")
            )
        return list(await self.session.scalars(statement))


class PlansRepository:
    """Plans (the platform's, not one tenant's)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_name_or_404(self, name: str, *, lock: bool = False) -> Plan:
        statement = select(Plan).where(Plan.name == name)
        plan = await self.session.scalar(statement.with_for_update() if lock else statement)
        if plan is None:
            raise NotFoundError(f"No plan named {name!r}.")
        return plan

    async def all_with_tenants(self) -> list[tuple[Plan, int]]:
        """Every plan by name, with the number of tenants on it."""
        on_it = (
            select(func.count())
            .select_from(Tenant)
            .where(Tenant.plan_id == Plan.id)
            .correlate(Plan)
            .scalar_subquery()
        )
        rows = await self.session.execute(select(Plan, on_it).order_by(Plan.name))
        return [(plan, int(count)) for plan, count in rows.all()]

    async def tenants_on(self, plan_id: uuid.UUID) -> int:
        count = await self.session.scalar(
            select(func.count()).select_from(Tenant).where(Tenant.plan_id == plan_id)
        )
        return int(count or 0)
