"""/llm (chat, streamed chat, embeddings) and /graph (entities): 503 problem+json, naming the
missing setting, when ZHIPUAI_API_KEY or NEO4J_URI is not set."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query
from sse_starlette import EventSourceResponse

from switchyard.ai.schemas import (
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EntityOut,
    EntityPage,
    UsageOut,
)
from switchyard.auth.dependencies import TenantDep, require_scope
from switchyard.documents.dependencies import GraphDep
from switchyard.errors import SwitchyardError
from switchyard.platform.dependencies import LLMDep, ServicesDep
from switchyard.services.embeddings import ZhipuEmbedder

llm_router = APIRouter(
    prefix="/llm", tags=["llm"], dependencies=[Depends(require_scope("llm:use"))]
)
graph_router = APIRouter(
    prefix="/graph", tags=["graph"], dependencies=[Depends(require_scope("documents:read"))]
)


@llm_router.post(
    "/chat",
    response_model=ChatResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "With `stream`"}},
)
async def chat(body: ChatRequest, llm: LLMDep, tenant_id: TenantDep) -> Any:
    """A chat completion; with `stream: true`, Server-Sent Events of `delta`s, then `done`."""
    options: dict[str, Any] = {
        "model": body.model,
        "temperature": body.temperature,
        "max_tokens": body.max_tokens,
    }
    if not body.stream:
        result = await llm.chat(tenant_id, body.messages, **options)
        return ChatResponse(
            content=result.content,
            model=result.model,
            finish_reason=result.finish_reason,
            usage=UsageOut(**vars(result.usage)),
        )
    chunks = llm.chat_stream(tenant_id, body.messages, **options)
    # The first chunk is awaited here, so a refusal is still an HTTP error, not an event.
    first = await anext(chunks, None)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            chunk = first
            while chunk is not None:
                if chunk.delta:
                    yield {"event": "delta", "data": json.dumps({"content": chunk.delta})}
                if chunk.finish_reason or chunk.usage:
                    usage = vars(chunk.usage) if chunk.usage else None
                    done = {"finish_reason": chunk.finish_reason, "usage": usage}
                    yield {"event": "done", "data": json.dumps(done)}
                chunk = await anext(chunks, None)
        except SwitchyardError as exc:
            yield {"event": "error", "data": json.dumps({"code": exc.code, "detail": exc.detail})}
        finally:
            await chunks.aclose()

    return EventSourceResponse(events())


@llm_router.post("/embeddings")
async def embeddings(
    body: EmbeddingsRequest, services: ServicesDep, tenant_id: TenantDep
) -> EmbeddingsResponse:
    """Vectors from the deployment's embedder (EMBEDDING_PROVIDER), the one search uses:
    Zhipu's model with ZHIPUAI_API_KEY, else all-MiniLM-L6-v2 in process (no tokens)."""
    embedder = services.embedder
    if isinstance(embedder, ZhipuEmbedder):
        result = await embedder.llm.embed(tenant_id, body.input)
        return EmbeddingsResponse(
            model=result.model, data=result.vectors, usage=UsageOut(**vars(result.usage))
        )
    vectors = await embedder.embed(tenant_id, body.input)  # 503 naming what is missing
    none = UsageOut(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    return EmbeddingsResponse(model=embedder.name, data=vectors, usage=none)


@graph_router.get("/entities")
async def entities(
    graph: GraphDep, tenant_id: TenantDep, limit: int = Query(default=50, ge=1, le=500)
) -> EntityPage:
    """The tenant's entities, most mentioned first."""
    found = await graph.entities(tenant_id, limit=limit)
    return EntityPage(items=[EntityOut(**vars(entity)) for entity in found])
