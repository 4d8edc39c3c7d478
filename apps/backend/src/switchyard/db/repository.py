"""The base of every domain's repository: queries of one tenant-owned model, always within one
tenant (built on `db.tenancy.scoped`, so a repository cannot forget the tenant filter).

    class DocumentRepository(TenantRepository[KnowledgeDocument]):
        model = KnowledgeDocument
        not_found = "No such document."

    documents = DocumentRepository(session, tenant_id)
    document = await documents.get_or_404(document_id)       # another tenant's id: 404 too
    rows, next_cursor = await documents.page(documents.select(), cursor, limit)
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db import pagination
from switchyard.db.base import Base
from switchyard.db.tenancy import scoped
from switchyard.errors import NotFoundError

M = TypeVar("M", bound=Base)


class TenantRepository(Generic[M]):
    """`model` must have `tenant_id`, `id` and `created_at` columns; `not_found` is the 404's
    detail (`{id}` is replaced by the id asked for)."""

    model: ClassVar[type[Any]]
    not_found: ClassVar[str] = "Not found."

    def __init__(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def select(self, *criteria: Any) -> Select[M]:
        """`SELECT model WHERE tenant_id = :tenant AND criteria...`."""
        statement: Select[M] = scoped(self.model, self.tenant_id, *criteria)
        return statement

    async def first(self, *criteria: Any) -> M | None:
        found: M | None = await self.session.scalar(self.select(*criteria).limit(1))
        return found

    async def get(self, row_id: uuid.UUID) -> M | None:
        return await self.first(self.model.id == row_id)

    async def get_or_404(self, row_id: uuid.UUID) -> M:
        """The row of this tenant, or 404 (the same answer for another tenant's id)."""
        found = await self.get(row_id)
        if found is None:
            raise NotFoundError(self.not_found.format(id=row_id))
        return found

    async def all(self, statement: Select[M]) -> list[M]:
        return list((await self.session.scalars(statement)).all())

    async def page(
        self, statement: Select[M], cursor: str | None, limit: int
    ) -> tuple[list[M], str | None]:
        """One page of `statement` newest first, after `cursor` (a 422 on `query.cursor` when
        it is not one this API gave out), and the cursor of the next page (None on the last)."""
        after = pagination.parse_cursor(cursor)
        rows = await self.all(pagination.newest_first(statement, self.model, after, limit))
        return pagination.cut(rows, limit)
