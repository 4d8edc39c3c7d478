"""Queries of the documents domain, each within one tenant: document rows (PostgreSQL). The
knowledge graph's queries are `documents.graph`; the vectors', `services.vectors`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import func, select, text

from switchyard.db.models import DocumentStatus, KnowledgeDocument
from switchyard.db.repository import TenantRepository

# Advisory lock namespace ("SD") of a tenant's uploads, while one checks the ingestion cap.
UPLOAD_LOCK_NAMESPACE = 0x5344
INGESTING = (DocumentStatus.PENDING, DocumentStatus.PROCESSING)


class DocumentRepository(TenantRepository[KnowledgeDocument]):
    model = KnowledgeDocument
    not_found = "No such document."

    async def page_of(
        self, *, status: DocumentStatus | None, cursor: str | None, limit: int
    ) -> tuple[list[KnowledgeDocument], str | None]:
        """Newest first, filtered by status."""
        statement = self.select()
        if status is not None:
            statement = statement.where(KnowledgeDocument.status == status)
        return await self.page(statement, cursor, limit)

    async def existing(self, document_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `document_ids` are documents of this tenant (not deleted)."""
        rows = await self.session.scalars(
            self.select(KnowledgeDocument.id.in_(set(document_ids))).with_only_columns(
                KnowledgeDocument.id
            )
        )
        return set(rows)

    async def lock_uploads(self) -> None:
        """Hold the tenant's upload lock for the rest of the transaction."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(CAST(:tenant AS text)))"),
            {"namespace": UPLOAD_LOCK_NAMESPACE, "tenant": str(self.tenant_id)},
        )

    async def count_ingesting(self) -> int:
        count = await self.session.scalar(
            select(func.count())
            .select_from(KnowledgeDocument)
            .where(
                KnowledgeDocument.tenant_id == self.tenant_id,
                KnowledgeDocument.status.in_(INGESTING),
            )
        )
        return count or 0
