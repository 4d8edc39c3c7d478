"""Documents: stored objects plus a row; every query scoped to the tenant."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db import pagination
from switchyard.db.models import DocumentStatus, KnowledgeDocument
from switchyard.db.tenancy import scoped
from switchyard.errors import NotFoundError
from switchyard.services.container import Services

logger = logging.getLogger(__name__)


def object_key(document_id: uuid.UUID) -> str:
    """Relative to the tenant's prefix; made by us, never from the uploaded file's name."""
    return f"documents/{document_id}/original"


async def get(
    session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> KnowledgeDocument:
    found = await session.scalar(
        scoped(KnowledgeDocument, tenant_id, KnowledgeDocument.id == document_id)
    )
    if found is None:
        raise NotFoundError("No such document.")
    return found


async def page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    status: DocumentStatus | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[KnowledgeDocument]:
    statement = scoped(KnowledgeDocument, tenant_id)
    if status is not None:
        statement = statement.where(KnowledgeDocument.status == status)
    statement = pagination.newest_first(statement, KnowledgeDocument, after, limit)
    return list((await session.scalars(statement)).all())


async def store_upload(
    services: Services,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    chunks: AsyncIterator[bytes],
    content_type: str,
) -> int:
    """Stream the upload into object storage; nothing is left behind when it is refused."""
    info = await services.objects.put(
        tenant_id,
        object_key(document_id),
        chunks,
        content_type=content_type,
        max_bytes=services.settings.document_max_bytes,
    )
    return info.size


async def purge(services: Services, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
    """Remove the document's object, vectors and graph nodes (each step idempotent)."""
    await services.objects.delete(tenant_id, object_key(document_id))
    await services.vectors.delete_document(tenant_id, document_id)
    if services.graph is not None:
        await services.graph.delete_document(tenant_id, document_id)
