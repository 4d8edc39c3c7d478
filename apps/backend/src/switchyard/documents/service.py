"""Documents: stored objects plus a row; every query scoped to the tenant (repository)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePath

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth.principal import Principal
from switchyard.db.models import DocumentStatus, KnowledgeDocument, TaskRun
from switchyard.db.session import on_failure
from switchyard.documents.graph import graph_of
from switchyard.documents.repository import DocumentRepository
from switchyard.errors import TooManyRequestsError
from switchyard.services import quotas, usage
from switchyard.services.container import Services
from switchyard.services.usage import Meter, Use
from switchyard.tasks.dependencies import RunSubmitter
from switchyard.tasks.schemas import RunRequest

logger = logging.getLogger(__name__)


INGESTING_RETRY_AFTER_SECONDS = 10


async def check_ingesting(
    session: AsyncSession, tenant_id: uuid.UUID, limit: int, *, locked: bool = False
) -> None:
    """429 while the tenant has `limit` documents being ingested. `locked`: hold the tenant's
    upload lock for the rest of the transaction, so concurrent uploads count each other."""
    documents = DocumentRepository(session, tenant_id)
    if locked:
        await documents.lock_uploads()
    ingesting = await documents.count_ingesting()
    if ingesting >= limit:
        raise TooManyRequestsError(
            f"{ingesting} documents of this tenant are being ingested (at most {limit} at "
            f"once, DOCUMENT_MAX_INGESTING_PER_TENANT); retry when one is done.",
            INGESTING_RETRY_AFTER_SECONDS,
        )


def object_key(document_id: uuid.UUID) -> str:
    """Relative to the tenant's prefix; made by us, never from the uploaded file's name."""
    return f"documents/{document_id}/original"


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


@dataclass(frozen=True)
class Upload:
    """A file being uploaded: its names as given (already checked) and its bytes as they come."""

    filename: str
    title: str | None
    content_type: str
    chunks: AsyncIterator[bytes]
    size: int | None = None  # as the request gave it, when it did


def storage_demands(size: int, *, run: bool, llm: bool) -> dict[str, int]:
    """What an upload of `size` bytes asks of the tenant's quotas: a document and its bytes
    and, for its ingestion run, a run (and LLM tokens, with an LLM to spend them)."""
    demands = {"stored_bytes": size, "documents": 1}
    if run:
        demands |= {"runs_per_month": 1, "runs_per_day": 1, "run_seconds_per_month": 1}
    if run and llm:
        demands |= dict.fromkeys(quotas.LLM_QUOTAS, 1)
    return demands


async def accept_upload(
    session: AsyncSession,
    services: Services,
    submit: RunSubmitter,
    principal: Principal,
    upload: Upload,
) -> tuple[KnowledgeDocument, TaskRun]:
    """Store the file, then record it as `pending` with its `documents.ingest` run in the
    request's unit of work (published once that commits). Nothing is left half-written: if
    the unit of work does not complete (the broker refuses the run, say), the object and the
    row are taken back. A tenant with DOCUMENT_MAX_INGESTING_PER_TENANT documents being
    ingested gets 429 before anything is stored and, counted again under the tenant's upload
    lock, before anything is recorded."""
    tenant_id, limit = principal.tenant_id, services.settings.document_max_ingesting_per_tenant
    llm = services.llm is not None
    async with (
        services.database_sessions() as reading
    ):  # a read: no transaction is held open during the upload
        await check_ingesting(reading, tenant_id, limit)
        # Over a quota (its bytes, documents, runs or tokens): refused before it is stored.
        demands = storage_demands(upload.size or 0, run=True, llm=llm)
        figures = await quotas.check(
            await reading.connection(), tenant_id, principal.limits, demands
        )
    await services.quotas.warn(tenant_id, principal.limits, figures)
    document_id = uuid.uuid4()
    size = await store_upload(services, tenant_id, document_id, upload.chunks, upload.content_type)
    on_failure(session, lambda: discard_upload(services, tenant_id, document_id))
    await check_ingesting(session, tenant_id, limit, locked=True)
    # Again with what was stored, under the upload lock: concurrent uploads count each other.
    await quotas.check(
        await session.connection(),
        tenant_id,
        principal.limits,
        storage_demands(size, run=False, llm=llm),
    )
    run, _ = await submit(
        RunRequest(task="documents.ingest", payload={"document_id": str(document_id)})
    )
    document = KnowledgeDocument(
        id=document_id,
        tenant_id=tenant_id,
        title=(upload.title or PurePath(upload.filename).stem or upload.filename)[:500],
        filename=upload.filename,
        content_type=upload.content_type,
        size_bytes=size,
        object_key=object_key(document_id),
        status=DocumentStatus.PENDING,
        created_by=principal.user_id,
        run_id=run.id,
    )
    session.add(document)
    await session.flush()
    await usage.add_in(session, *stored_uses(tenant_id, 1, size))
    await session.refresh(document)
    return document, run


def stored_uses(tenant_id: uuid.UUID, documents: int, size: int) -> tuple[Use, Use]:
    """A change of the tenant's stored documents and bytes (usage's stocks)."""
    return (
        Use(tenant_id, Meter.DOCUMENTS, "", documents),
        Use(tenant_id, Meter.STORED_BYTES, "", size),
    )


async def discard_upload(services: Services, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
    """Take back an upload whose unit of work did not complete: its row, if it was committed,
    and its object."""
    async with services.database_sessions.begin() as session:
        stored = await DocumentRepository(session, tenant_id).get(document_id)
        if stored is not None:
            await usage.add_in(session, *stored_uses(tenant_id, -1, -stored.size_bytes))
            await session.delete(stored)
    await services.objects.delete(tenant_id, object_key(document_id))


async def purge(services: Services, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
    """Remove the document's object, vectors and graph nodes (each step idempotent)."""
    await services.objects.delete(tenant_id, object_key(document_id))
    await services.vectors.delete_document(tenant_id, document_id)
    graph = graph_of(services)
    if graph is not None:
        await graph.delete_document(tenant_id, document_id)
