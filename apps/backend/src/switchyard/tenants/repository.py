"""Queries of tenants (a shared model: the platform's, not one tenant's)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import Tenant
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
