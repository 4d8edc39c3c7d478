"""Queries of the OAuth domain within one tenant: its clients."""

from __future__ import annotations

from switchyard.db.models import OAuthClient
from switchyard.db.repository import TenantRepository


class ClientRepository(TenantRepository[OAuthClient]):
    model = OAuthClient
    not_found = "No OAuth client {id}."

    async def oldest_first(self) -> list[OAuthClient]:
        return await self.all(self.select().order_by(OAuthClient.created_at))
