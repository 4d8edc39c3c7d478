"""Queries of the auth domain within one tenant: its API keys."""

from __future__ import annotations

from switchyard.db.models import ApiKey
from switchyard.db.repository import TenantRepository


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    not_found = "No API key {id}."

    async def oldest_first(self) -> list[ApiKey]:
        return await self.all(self.select().order_by(ApiKey.created_at))
