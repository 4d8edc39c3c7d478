"""Documents: stored objects plus a row; every query scoped to the tenant."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db import pagination
from switchyard.db.models import DocumentStatus, KnowledgeDocument
from switchyard.db.tenancy import scoped
from switchyard.errors import NotFoundError, TooManyRequestsError
from switchyard.services.container import Services

logger = logging.getLogger(__name__)


# Advisory lock namespace ("SD") of a tenant's uploads, while one checks the ingestion cap.
UPLOAD_LOCK_NAMESPACE = 0x5344
INGESTING = (DocumentStatus.PENDING, DocumentStatus.PROCESSING)
INGESTING_RETRY_AFTER_SECONDS = 10


async def check_ingesting(
    session: AsyncSession, tenant_id: uuid.UUID, limit: int, *, locked: bool = False
) -> None:
    """429 while the tenant has `limit` documents being ingested. `locked`: hold the tenant's
    upload lock for the rest of the transaction, so concurrent uploads count each other."""
    if locked:
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(CAST(:tenant AS text)))"),
            {"namespace": UPLOAD_LOCK_NAMESPACE, "tenant": str(tenant_id)},
        )
    ingesting = await session.scalar(
        select(func.count())
        .select_from(KnowledgeDocument)
        .where(KnowledgeDocument.tenant_id == tenant_id, KnowledgeDocument.status.in_(INGESTING))
    )
    if (ingesting or 0) >= limit:
        raise TooManyRequestsError(
            f"{ingesting} documents of this tenant are being ingested (at most {limit} at "
            f"once, DOCUMENT_MAX_INGESTING_PER_TENANT); retry when one is done.",
            INGESTING_RETRY_AFTER_SECONDS,
        )


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
