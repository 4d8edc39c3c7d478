"""/documents, /search and /answer."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Container
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette import EventSourceResponse

from switchyard.auth.dependencies import PrincipalDep, TenantDep, require_scope
from switchyard.db.models import DocumentStatus
from switchyard.documents import retrieval, service
from switchyard.documents.extract import CONTENT_TYPES, kind_of
from switchyard.documents.graph import require_graph
from switchyard.documents.repository import DocumentRepository
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
from switchyard.errors import (
    NUL_MESSAGE,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SwitchyardError,
)
from switchyard.platform.dependencies import RateLimiterDep, ServicesDep, SessionDep
from switchyard.services import usage
from switchyard.services.ratelimit import RateLimiter
from switchyard.tasks.dependencies import RunSubmitter, SubmitterDep
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
    responses={
        403: {"description": "Over the plan's stored_bytes or documents quota"},
        413: {"description": "Over DOCUMENT_MAX_BYTES"},
        415: {"description": "Type"},
    },
)
async def upload_document(
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    submit: SubmitterDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
    file: Annotated[UploadFile, File(description="Plain text, Markdown, HTML or PDF")],
    title: Annotated[str | None, Form(max_length=500)] = None,
) -> DocumentAccepted:
    """Store the file, record it as `pending`, and queue `documents.ingest`. A tenant's
    uploads are limited in rate (RATE_LIMIT_UPLOADS) and in documents being ingested at once
    (DOCUMENT_MAX_INGESTING_PER_TENANT): past either, 429 with Retry-After, nothing stored.
    Past the plan's stored bytes or documents, 403 naming the quota, nothing stored."""
    await limiter.enforce(services.settings.rate_limit_uploads, "uploads", str(principal.tenant_id))
    for field, text in (("body.title", title), ("body.file", file.filename)):
        if text is not None and "\x00" in text:
            raise InvalidInputError.on(field, NUL_MESSAGE, message=NUL_MESSAGE, type="string_nul")
    filename = PurePath(file.filename or "upload").name[:500] or "upload"
    content_type = CONTENT_TYPES[kind_of(filename, file.content_type)]
    upload = service.Upload(filename, title, content_type, _read(file), file.size)
    document, run = await service.accept_upload(session, services, submit, principal, upload)
    response.headers["Location"] = request.url_for("get_document", document_id=document.id).path
    return DocumentAccepted(document=DocumentOut.of(document), task_id=run.id)


@router.get("/documents", dependencies=READ)
async def list_documents(
    session: SessionDep,
    tenant_id: TenantDep,
    status: DocumentStatus | None = None,
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=200),
) -> DocumentPage:
    documents = DocumentRepository(session, tenant_id)
    page, next_cursor = await documents.page_of(status=status, cursor=cursor, limit=limit)
    return DocumentPage(items=[DocumentOut.of(row) for row in page], next_cursor=next_cursor)


@router.get("/documents/{document_id}", dependencies=READ)
async def get_document(
    document_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> DocumentOut:
    return DocumentOut.of(await DocumentRepository(session, tenant_id).get_or_404(document_id))


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
    document = await DocumentRepository(session, tenant_id).get_or_404(document_id)
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
    """Object, vectors and graph nodes first, then the row. An unknown id, another tenant's or
    one deleted already, is 404 like everywhere else."""
    document = await DocumentRepository(session, tenant_id).get_or_404(document_id)
    await service.purge(services, tenant_id, document.id)
    await usage.add_in(session, *service.stored_uses(tenant_id, -1, -document.size_bytes))
    await session.delete(document)


@router.get("/documents/{document_id}/graph", dependencies=READ)
async def document_graph(
    document_id: uuid.UUID, session: SessionDep, services: ServicesDep, tenant_id: TenantDep
) -> DocumentGraph:
    """The document's entities in the graph: 404 for an id not the tenant's before anything
    else (503 naming NEO4J_URI without a graph says nothing about ids)."""
    document = await DocumentRepository(session, tenant_id).get_or_404(document_id)
    summary = await require_graph(services).document_summary(tenant_id, document.id)
    if summary is None:
        raise NotFoundError("The document is not in the graph yet.")
    return summary


@dataclass(frozen=True)
class DocumentRuns:
    """Queues an internal task of one of the caller's documents, under the tenant's run rate
    limit, in the request's unit of work."""

    session: AsyncSession
    submit: RunSubmitter
    limiter: RateLimiter

    async def queue(
        self,
        document_id: uuid.UUID,
        task: str,
        allowed: Container[DocumentStatus],
        refusal: str,
        needs_graph: bool = False,
    ) -> RunAccepted:
        """409 with `refusal` (formatted with the status) unless the document is `allowed`;
        with `needs_graph`, 503 naming NEO4J_URI without a graph (the run could never work)."""
        tenant_id = self.submit.principal.tenant_id
        document = await DocumentRepository(self.session, tenant_id).get_or_404(document_id)
        if needs_graph:
            require_graph(self.submit.services)
        if document.status not in allowed:
            raise ConflictError(refusal.format(status=document.status.value))
        limit = self.submit.principal.runs_rate_limit(
            self.submit.services.settings.rate_limit_task_runs
        )
        await self.limiter.enforce(limit, "runs", str(tenant_id))
        body = RunRequest(task=task, payload={"document_id": str(document.id)})
        _, accepted = await self.submit(body)
        return accepted


async def get_document_runs(
    session: SessionDep, submit: SubmitterDep, limiter: RateLimiterDep
) -> DocumentRuns:
    return DocumentRuns(session, submit, limiter)


DocumentRunsDep = Annotated[DocumentRuns, Depends(get_document_runs)]


@router.post(
    "/documents/{document_id}/ingest",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=WRITE,
)
async def reingest_document(document_id: uuid.UUID, runs: DocumentRunsDep) -> RunAccepted:
    """Queue `documents.ingest` for a ready or failed document again (after changing the
    embedding provider or the chunk settings, say): its chunks and vectors are replaced."""
    return await runs.queue(
        document_id,
        "documents.ingest",
        (DocumentStatus.READY, DocumentStatus.FAILED),
        "The document is {status}; it is being ingested.",
    )


@router.post(
    "/documents/{document_id}/entities",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=WRITE,
)
async def extract_document_entities(document_id: uuid.UUID, runs: DocumentRunsDep) -> RunAccepted:
    """Queue `documents.extract_entities` for a ready document again (after an LLM outage,
    say): its named entities go into the graph. The outcome is the run's (`Location`)."""
    return await runs.queue(
        document_id,
        "documents.extract_entities",
        (DocumentStatus.READY,),
        "The document is {status}, not ready.",
        needs_graph=True,
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
