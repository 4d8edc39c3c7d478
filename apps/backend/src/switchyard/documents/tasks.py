"""documents.ingest and documents.extract_entities."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from switchyard.db.models import DocumentStatus, KnowledgeDocument
from switchyard.documents import service
from switchyard.documents.chunking import Chunk, split
from switchyard.documents.extract import UnreadableDocumentError, extract_text, kind_of
from switchyard.documents.graph import GraphChunk, Mention, graph_of, require_graph
from switchyard.documents.repository import DocumentRepository
from switchyard.errors import NotFoundError, SwitchyardError
from switchyard.platform.registry import RetryPolicy, TaskContext, task
from switchyard.services.container import Services
from switchyard.services.llm import ChatMessage, LLMError, LLMRequestError
from switchyard.services.quotas import QuotaExceededError
from switchyard.services.vectors import VectorChunk
from switchyard.settings import Settings

EMBED_BATCH: Final = 64
UPSERT_BATCH: Final = 500
MAX_ERROR: Final = 500
ENTITY_CHUNKS: Final = 50
ENTITY_PROMPT: Final = (
    "List the named entities (people, organisations, places, products, events) in the "
    'passage. Answer with JSON only: [{"name": "...", "kind": "person|organisation|place|'
    'product|event|other"}]. Answer [] when there are none.'
)


class TransientIngestError(Exception):
    """Worth another attempt: the LLM, storage or the vector store failed for now."""


class PermanentIngestError(Exception):
    """The document cannot be ingested as it is; retrying will not help."""


INGEST_RETRY: Final = RetryPolicy(
    max_retries=4,
    backoff_seconds=2,
    backoff_max_seconds=60,
    retry_on=(TransientIngestError, TimeoutError),
)


class DocumentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_id: uuid.UUID


def _describe(exc: BaseException) -> str:
    text = exc.detail if isinstance(exc, SwitchyardError) else str(exc)
    return (text or type(exc).__name__).strip()[:MAX_ERROR]


def _permanent(exc: BaseException) -> bool:
    """Errors that would happen again: bad input, missing configuration, refused requests."""
    if isinstance(exc, UnreadableDocumentError | LLMRequestError):
        return True
    if isinstance(exc, LLMError):
        return False  # rate limits, timeouts and provider errors pass
    return isinstance(exc, SwitchyardError) and exc.status in (404, 413, 415, 422, 503)


async def _set_state(
    services: Services,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    status: DocumentStatus,
    **fields: Any,
) -> KnowledgeDocument | None:
    async with services.database_sessions.begin() as session:
        try:
            document = await DocumentRepository(session, tenant_id).get_or_404(document_id)
        except NotFoundError:
            return None
        document.status = status
        for name, value in fields.items():
            setattr(document, name, value)
        return document


async def _embed(
    services: Services, tenant_id: uuid.UUID, chunks: list[Chunk]
) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(chunks), EMBED_BATCH):
        batch = [chunk.text for chunk in chunks[start : start + EMBED_BATCH]]
        vectors.extend(await services.embedder.embed(tenant_id, batch))
    return vectors


def _max_chars(settings: Settings) -> int:
    """More text than this would split into more chunks than DOCUMENT_MAX_CHUNKS allows."""
    return settings.document_max_chunks * settings.chunk_size_chars


async def ingest_document(
    services: Services, tenant_id: uuid.UUID, document: KnowledgeDocument
) -> list[Chunk]:
    """Object → text → chunks → embeddings → vectors (replacing the old ones) → graph."""
    settings = services.settings
    _, stream = await services.objects.get(tenant_id, document.object_key)
    data = b"".join([piece async for piece in stream])
    kind = kind_of(document.filename, document.content_type)
    text = await services.cpu.run(
        extract_text,
        data,
        kind,
        _max_chars(settings),
        limit=settings.document_extract_timeout_seconds,
        what="text extraction",
    )
    chunks = split(text, settings.chunk_size_chars, settings.chunk_overlap_chars)
    if len(chunks) > settings.document_max_chunks:
        raise UnreadableDocumentError(
            f"the document splits into {len(chunks)} chunks; the limit is "
            f"{settings.document_max_chunks} (DOCUMENT_MAX_CHUNKS)"
        )
    embeddings = await _embed(services, tenant_id, chunks)
    await services.vectors.delete_document(tenant_id, document.id)
    rows = [
        VectorChunk(
            id=f"{document.id}:{chunk.index}",
            document_id=document.id,
            text=chunk.text,
            embedding=embedding,
            metadata={
                "chunk_index": chunk.index,
                "start": chunk.start,
                "end": chunk.end,
                "title": document.title,
            },
        )
        for chunk, embedding in zip(chunks, embeddings, strict=True)
    ]
    for start in range(0, len(rows), UPSERT_BATCH):
        await services.vectors.upsert(tenant_id, rows[start : start + UPSERT_BATCH])
    graph = graph_of(services)
    if graph is not None:
        await graph.delete_document(tenant_id, document.id)
        await graph.upsert_document(tenant_id, document.id, document.title)
        await graph.add_chunks(
            tenant_id,
            document.id,
            [GraphChunk(f"{document.id}:{c.index}", c.index, c.text) for c in chunks],
        )
    return chunks


def parse_entities(answer: str) -> list[tuple[str, str]]:
    """(name, kind) pairs from the model's JSON answer; anything unparsable gives none."""
    found = re.search(r"\[.*\]", answer, re.DOTALL)
    if found is None:
        return []
    try:
        items = json.loads(found.group(0))
    except ValueError:
        return []
    pairs = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
            kind = item.get("kind") if isinstance(item.get("kind"), str) else "other"
            pairs.append((item["name"].strip()[:200], str(kind).strip().lower()[:40] or "other"))
    return pairs


async def extract_entities(
    services: Services, tenant_id: uuid.UUID, document_id: uuid.UUID, chunks: list[Chunk]
) -> int:
    """Ask the LLM for each chunk's entities and write MENTIONS edges; the number written."""
    llm, graph = services.require_llm(), require_graph(services)
    mentions: list[Mention] = []
    for chunk in chunks[:ENTITY_CHUNKS]:
        result = await llm.chat(
            tenant_id,
            [
                ChatMessage(role="system", content=ENTITY_PROMPT),
                ChatMessage(role="user", content=chunk.text),
            ],
            temperature=0,
            purpose="entities",
        )
        chunk_id = f"{document_id}:{chunk.index}"
        mentions.extend(Mention(chunk_id, n, k) for n, k in parse_entities(result.content))
    if not mentions:
        return 0
    return await graph.add_mentions(tenant_id, mentions)


@task(
    "documents.ingest",
    input=DocumentInput,
    description="Extract, chunk and embed an uploaded document into the tenant's vectors and graph",
    queue="llm",
    retry=INGEST_RETRY,
    soft_time_limit=900,
    time_limit=960,
    access="internal",  # POST /documents starts it (documents:write)
    spends_llm_tokens=True,  # with Zhipu's embeddings, and its entity extraction
)
async def ingest(payload: DocumentInput, ctx: TaskContext) -> dict[str, Any]:
    services, tenant_id, document_id = ctx.services, ctx.tenant_id, payload.document_id
    document = await _set_state(
        services, tenant_id, document_id, DocumentStatus.PROCESSING, error=None, run_id=ctx.run_id
    )
    if document is None:
        raise PermanentIngestError("the document was deleted before it was ingested")
    try:
        chunks = await ingest_document(services, tenant_id, document)
    except QuotaExceededError as exc:  # not retried: replayed once the quota resets
        await _set_state(services, tenant_id, document_id, DocumentStatus.FAILED, error=exc.detail)
        raise
    except Exception as exc:
        if _permanent(exc):
            await _set_state(
                services, tenant_id, document_id, DocumentStatus.FAILED, error=_describe(exc)
            )
            raise PermanentIngestError(_describe(exc)) from exc
        if ctx.attempt > INGEST_RETRY.max_retries:
            error = f"gave up after {ctx.attempt} attempts: {_describe(exc)}"
            await _set_state(services, tenant_id, document_id, DocumentStatus.FAILED, error=error)
        raise TransientIngestError(_describe(exc)) from exc
    ready = await _set_state(
        services, tenant_id, document_id, DocumentStatus.READY, chunk_count=len(chunks)
    )
    if ready is None:  # deleted while it was being ingested: take back what was written
        await service.purge(services, tenant_id, document_id)
        return {"document_id": str(document_id), "deleted": True}
    entities = 0
    if services.llm is not None and services.neo4j is not None:
        try:
            entities = await extract_entities(services, tenant_id, document_id, chunks)
        except Exception as exc:  # the document is usable without its entities
            ctx.logger.warning("entity extraction failed", extra={"error": _describe(exc)})
    return {"document_id": str(document_id), "chunks": len(chunks), "entities": entities}


@task(
    "documents.extract_entities",
    input=DocumentInput,
    description="Extract named entities of a ready document with the LLM into the graph",
    queue="llm",
    retry=RetryPolicy(max_retries=3, retry_on=(LLMError,)),
    soft_time_limit=900,
    time_limit=960,
    access="internal",  # documents.ingest starts it
    spends_llm_tokens=True,
)
async def extract_entities_task(payload: DocumentInput, ctx: TaskContext) -> dict[str, Any]:
    services = ctx.services
    async with services.database_sessions() as session:
        document = await DocumentRepository(session, ctx.tenant_id).get_or_404(payload.document_id)
    graph = require_graph(services)
    summary = await graph.document_summary(ctx.tenant_id, document.id)
    if summary is None:
        raise NotFoundError("the document is not in the graph yet; ingest it first")
    _, stream = await services.objects.get(ctx.tenant_id, document.object_key)
    data = b"".join([piece async for piece in stream])
    kind = kind_of(document.filename, document.content_type)
    text = extract_text(data, kind, _max_chars(services.settings))
    chunks = split(text, services.settings.chunk_size_chars, services.settings.chunk_overlap_chars)
    written = await extract_entities(services, ctx.tenant_id, document.id, chunks)
    return {"document_id": str(document.id), "entities": written}
