"""Search the tenant's chunks, and answer a question from them with citations."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Final

from switchyard.documents.repository import DocumentRepository
from switchyard.documents.schemas import Citation, SearchHit
from switchyard.services.container import Services
from switchyard.services.llm import ChatChunk, ChatMessage, ChatResult
from switchyard.services.usage import Meter, Use

SNIPPET_CHARS: Final = 500
NOTHING_FOUND: Final = "Nothing in your documents answers this."
SYSTEM_PROMPT: Final = (
    "Answer the question using only the numbered passages below. After each statement, cite "
    "the passages it rests on as [n]. If the passages do not contain the answer, say so."
)
_MARKER: Final = re.compile(r"\[(\d{1,3})\]")


async def search(
    services: Services,
    tenant_id: uuid.UUID,
    query: str,
    top_k: int,
    document_ids: Sequence[uuid.UUID] | None = None,
) -> list[SearchHit]:
    """Ranked chunks of the tenant's existing documents (vectors of a deleted one never show)."""
    top_k = min(top_k, services.settings.search_max_top_k)
    services.usage.count(Use(tenant_id, Meter.SEARCH_QUERIES, "search", 1))
    [embedding] = await services.embedder.embed(tenant_id, [query])
    where = {"document_id": [str(d) for d in document_ids]} if document_ids else None
    matches = await services.vectors.query(tenant_id, embedding, top_k=top_k, where=where)
    if not matches:
        return []
    async with services.database_sessions() as session:
        present = await DocumentRepository(session, tenant_id).existing(
            match.document_id for match in matches
        )
    return [
        SearchHit(
            document_id=match.document_id,
            title=str(match.metadata.get("title", "")),
            chunk_index=int(match.metadata.get("chunk_index", 0)),
            start=int(match.metadata.get("start", 0)),
            end=int(match.metadata.get("end", 0)),
            snippet=match.text[:SNIPPET_CHARS],
            score=round(match.score, 4),
        )
        for match in matches
        if match.document_id in present
    ]


def prompt(question: str, hits: Sequence[SearchHit]) -> list[ChatMessage]:
    passages = "\n\n".join(
        f"[{n}] ({hit.title}, chunk {hit.chunk_index})\n{hit.snippet}"
        for n, hit in enumerate(hits, start=1)
    )
    return [
        ChatMessage(role="system", content=SYSTEM_PROMPT),
        ChatMessage(role="user", content=f"Passages:\n\n{passages}\n\nQuestion: {question}"),
    ]


def citations(answer: str, hits: Sequence[SearchHit]) -> list[Citation]:
    """The passages the answer marks as [n], in order of first mention; every passage given
    as context when the model marked none."""
    numbers: list[int] = []
    for found in _MARKER.finditer(answer):
        number = int(found.group(1))
        if 1 <= number <= len(hits) and number not in numbers:
            numbers.append(number)
    chosen = [hits[n - 1] for n in numbers] if numbers else list(hits)
    return [
        Citation(document_id=h.document_id, title=h.title, chunk_index=h.chunk_index)
        for h in chosen
    ]


async def retrieve_for_answer(
    services: Services,
    tenant_id: uuid.UUID,
    question: str,
    top_k: int | None,
    document_ids: Sequence[uuid.UUID] | None,
) -> list[SearchHit]:
    services.require_llm()  # 503 naming ZHIPUAI_API_KEY before any work
    return await search(
        services, tenant_id, question, top_k or services.settings.answer_top_k, document_ids
    )


async def answer(
    services: Services, tenant_id: uuid.UUID, question: str, hits: Sequence[SearchHit]
) -> ChatResult | None:
    """The completion, or None when nothing was retrieved (no paid call then)."""
    if not hits:
        return None
    return await services.require_llm().chat(
        tenant_id, prompt(question, hits), temperature=0.2, purpose="answer"
    )


def answer_stream(
    services: Services, tenant_id: uuid.UUID, question: str, hits: Sequence[SearchHit]
) -> AsyncGenerator[ChatChunk]:
    return services.require_llm().chat_stream(
        tenant_id, prompt(question, hits), temperature=0.2, purpose="answer"
    )
