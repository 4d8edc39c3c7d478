"""Queries of the data sources domain, each within one tenant."""

from __future__ import annotations

from switchyard.db.models import DataSourceConnection
from switchyard.db.repository import TenantRepository


class DataSourceRepository(TenantRepository[DataSourceConnection]):
    model = DataSourceConnection
    not_found = "No such data source."

    async def listed(self) -> list[DataSourceConnection]:
        return await self.all(self.select().order_by(DataSourceConnection.name))
