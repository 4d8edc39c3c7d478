"""/documents, /search and /answer."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from switchyard.api.input_guard import NUL_MESSAGE
from switchyard.auth.principal import Principal
from switchyard.db import pagination
from switchyard.db.models import DocumentStatus, KnowledgeDocument
from switchyard.dependencies import (
    BrokerDep,
    GraphDep,
    PrincipalDep,
    RateLimiterDep,
    RegistryDep,
    ServicesDep,
    SessionDep,
    TenantDep,
    enforce,
    require_scope,
)
from switchyard.documents import retrieval, service
from switchyard.documents.extract import CONTENT_TYPES, kind_of
from switchyard.documents.schemas import (
    AnswerRequest,
    AnswerResponse,
    DocumentAccepted,
    DocumentGraph,
    DocumentOut,
    DocumentPage,
    SearchRequest,
    SearchResponse,
)
from switchyard.errors import ConflictError, InvalidInputError, NotFoundError, SwitchyardError
from switchyard.platform.broker import Broker
from switchyard.platform.registry import TaskRegistry
from switchyard.services.container import Services
from switchyard.services.ratelimit import RateLimiter
from switchyard.tasks.endpoints import accept_run
from switchyard.tasks.schemas import RunAccepted, RunRequest

logger = logging.getLogger(__name__)
router = APIRouter(tags=["documents"])
READ = [Depends(require_scope("documents:read"))]
WRITE = [Depends(require_scope("documents:write"))]
UPLOAD_CHUNK = 256 * 1024


async def _read(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


@router.post(
    "/documents",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=WRITE,
    responses={413: {"description": "Over DOCUMENT_MAX_BYTES"}, 415: {"description": "Type"}},
)
async def upload_document(
    request: Request,
    response: Response,
    services: ServicesDep,
    broker: BrokerDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
    file: Annotated[UploadFile, File(description="Plain text, Markdown, HTML or PDF")],
    title: Annotated[str | None, Form(max_length=500)] = None,
) -> DocumentAccepted:
    """Store the file, record it as `pending`, and queue `documents.ingest`. A tenant's
    uploads are limited in rate (RATE_LIMIT_UPLOADS) and in documents being ingested at once
    (DOCUMENT_MAX_INGESTING_PER_TENANT): past either, 429 with Retry-After, nothing stored."""
    tenant_id = principal.tenant_id
    settings = services.settings
    assert services.sessions is not None
    await enforce(limiter, settings.rate_limit_uploads, "uploads", str(tenant_id))
    async with services.sessions() as session:  # before anything is stored
        await service.check_ingesting(
            session, tenant_id, settings.document_max_ingesting_per_tenant
        )
    for field, text in (("body.title", title), ("body.file", file.filename)):
        if text is not None and "\x00" in text:
            raise InvalidInputError(
                NUL_MESSAGE, [{"field": field, "message": NUL_MESSAGE, "type": "string_nul"}]
            )
    filename = PurePath(file.filename or "upload").name[:500] or "upload"
    kind = kind_of(filename, file.content_type)
    document_id = uuid.uuid4()
    size = await service.store_upload(
        services, tenant_id, document_id, _read(file), CONTENT_TYPES[kind]
    )
    try:
        async with services.sessions.begin() as session:
            # Again, under the tenant's upload lock: concurrent uploads count each other.
            await service.check_ingesting(
                session, tenant_id, settings.document_max_ingesting_per_tenant, locked=True
            )
            document = KnowledgeDocument(
                id=document_id,
                tenant_id=tenant_id,
                title=(title or PurePath(filename).stem or filename)[:500],
                filename=filename,
                content_type=CONTENT_TYPES[kind],
                size_bytes=size,
                object_key=service.object_key(document_id),
                status=DocumentStatus.PENDING,
                created_by=principal.user_id,
            )
            session.add(document)
        run, _ = await accept_run(
            RunRequest(task="documents.ingest", payload={"document_id": str(document_id)}),
            request,
            response,
            services,
            broker,
            registry,
            principal,
        )
    except BaseException:
        # Nothing half-written: without a queued run the upload is taken back whole.
        async with services.sessions.begin() as session:
            stored = await session.get(KnowledgeDocument, document_id)
            if stored is not None:
                await session.delete(stored)
        await services.objects.delete(tenant_id, service.object_key(document_id))
        raise
    async with services.sessions.begin() as session:
        document = await service.get(session, tenant_id, document_id)
        document.run_id = run.id
        await session.flush()
        await session.refresh(document)
    response.headers["Location"] = request.url_for("get_document", document_id=document_id).path
    return DocumentAccepted(document=DocumentOut.of(document), task_id=run.id)


@router.get("/documents", dependencies=READ)
async def list_documents(
    session: SessionDep,
    tenant_id: TenantDep,
    status: DocumentStatus | None = None,
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=200),
) -> DocumentPage:
    after = pagination.parse_cursor(cursor)
    rows = await service.page(session, tenant_id, status=status, after=after, limit=limit)
    page, next_cursor = pagination.cut(rows, limit)
    return DocumentPage(items=[DocumentOut.of(row) for row in page], next_cursor=next_cursor)


@router.get("/documents/{document_id}", dependencies=READ)
async def get_document(
    document_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> DocumentOut:
    return DocumentOut.of(await service.get(session, tenant_id, document_id))


@router.get(
    "/documents/{document_id}/content",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def document_content(
    document_id: uuid.UUID, session: SessionDep, services: ServicesDep, tenant_id: TenantDep
) -> StreamingResponse:
    """The uploaded file as it was stored, streamed."""
    document = await service.get(session, tenant_id, document_id)
    info, stream = await services.objects.get(tenant_id, document.object_key)
    disposition = f"attachment; filename*=UTF-8''{_quote(document.filename)}"
    return StreamingResponse(
        stream,
        media_type=document.content_type,
        headers={"Content-Length": str(info.size), "Content-Disposition": disposition},
    )


def _quote(filename: str) -> str:
    from urllib.parse import quote

    return quote(filename, safe="")


@router.delete(
    "/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=WRITE
)
async def delete_document(
    document_id: uuid.UUID, session: SessionDep, services: ServicesDep, tenant_id: TenantDep
) -> None:
    """Object, vectors and graph nodes first, then the row; deleting twice is fine (204)."""
    try:
        document = await service.get(session, tenant_id, document_id)
    except NotFoundError:
        return
    await service.purge(services, tenant_id, document.id)
    await session.delete(document)


@router.get("/documents/{document_id}/graph", dependencies=READ)
async def document_graph(
    document_id: uuid.UUID, session: SessionDep, graph: GraphDep, tenant_id: TenantDep
) -> DocumentGraph:
    document = await service.get(session, tenant_id, document_id)
    summary = await graph.document_summary(tenant_id, document.id)
    if summary is None:
        raise NotFoundError("The document is not in the graph yet.")
    return DocumentGraph(
        document_id=document.id,
        title=str(summary["title"]),
        chunks=int(summary["chunks"]),
        entities=sorted(str(name) for name in summary["entities"]),
    )


async def _queue_for_document(
    task: str,
    document: KnowledgeDocument,
    request: Request,
    response: Response,
    services: Services,
    broker: Broker,
    registry: TaskRegistry,
    principal: Principal,
    limiter: RateLimiter,
) -> RunAccepted:
    """Queue an internal task of a document, under the tenant's run rate limit."""
    limit = services.settings.rate_limit_task_runs
    await enforce(limiter, limit, "runs", str(principal.tenant_id))
    body = RunRequest(task=task, payload={"document_id": str(document.id)})
    _, accepted = await accept_run(body, request, response, services, broker, registry, principal)
    return accepted


@router.post(
    "/documents/{document_id}/ingest",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=WRITE,
)
async def reingest_document(
    document_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    broker: BrokerDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
) -> RunAccepted:
    """Queue `documents.ingest` for a ready or failed document again (after changing the
    embedding provider or the chunk settings, say): its chunks and vectors are replaced."""
    document = await service.get(session, principal.tenant_id, document_id)
    if document.status not in (DocumentStatus.READY, DocumentStatus.FAILED):
        raise ConflictError(f"The document is {document.status.value}; it is being ingested.")
    return await _queue_for_document(
        "documents.ingest",
        document,
        request,
        response,
        services,
        broker,
        registry,
        principal,
        limiter,
    )


@router.post(
    "/documents/{document_id}/entities",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=WRITE,
)
async def extract_document_entities(
    document_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    broker: BrokerDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
) -> RunAccepted:
    """Queue `documents.extract_entities` for a ready document again (after an LLM outage,
    say): its named entities go into the graph. The outcome is the run's (`Location`)."""
    document = await service.get(session, principal.tenant_id, document_id)
    if document.status is not DocumentStatus.READY:
        raise ConflictError(f"The document is {document.status.value}, not ready.")
    return await _queue_for_document(
        "documents.extract_entities",
        document,
        request,
        response,
        services,
        broker,
        registry,
        principal,
        limiter,
    )


@router.post("/search", dependencies=READ)
async def search(
    body: SearchRequest, services: ServicesDep, tenant_id: TenantDep
) -> SearchResponse:
    """Chunks of the caller's documents, most similar first."""
    hits = await retrieval.search(services, tenant_id, body.query, body.top_k, body.document_ids)
    return SearchResponse(query=body.query, hits=hits)


@router.post(
    "/answer",
    dependencies=READ,
    response_model=AnswerResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "With `stream`"}},
)
async def answer(body: AnswerRequest, services: ServicesDep, tenant_id: TenantDep) -> Any:
    """Retrieval, then a GLM answer citing the chunks it used; `stream: true` sends `delta`
    events, then `citations`, then `done`."""
    hits = await retrieval.retrieve_for_answer(
        services, tenant_id, body.question, body.top_k, body.document_ids
    )
    if not body.stream:
        result = await retrieval.answer(services, tenant_id, body.question, hits)
        if result is None:
            return AnswerResponse(answer=retrieval.NOTHING_FOUND, citations=[], model="")
        return AnswerResponse(
            answer=result.content,
            citations=retrieval.citations(result.content, hits),
            model=result.model,
        )
    if not hits:

        async def nothing() -> AsyncIterator[dict[str, str]]:
            yield {"event": "delta", "data": json.dumps({"content": retrieval.NOTHING_FOUND})}
            yield {"event": "citations", "data": json.dumps({"citations": []})}
            yield {"event": "done", "data": json.dumps({"finish_reason": "stop"})}

        return EventSourceResponse(nothing())
    chunks = retrieval.answer_stream(services, tenant_id, body.question, hits)
    first = await anext(chunks, None)  # a refusal is still an HTTP error, not an event

    async def events() -> AsyncIterator[dict[str, str]]:
        text = ""
        finish: str | None = None
        try:
            chunk = first
            while chunk is not None:
                if chunk.delta:
                    text += chunk.delta
                    yield {"event": "delta", "data": json.dumps({"content": chunk.delta})}
                finish = chunk.finish_reason or finish
                chunk = await anext(chunks, None)
        except SwitchyardError as exc:
            yield {"event": "error", "data": json.dumps({"code": exc.code, "detail": exc.detail})}
            return
        finally:
            await chunks.aclose()
        cited = [c.model_dump(mode="json") for c in retrieval.citations(text, hits)]
        yield {"event": "citations", "data": json.dumps({"citations": cited})}
        yield {"event": "done", "data": json.dumps({"finish_reason": finish})}

    return EventSourceResponse(events())
