from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from switchyard.db.models import DocumentStatus, KnowledgeDocument


class DocumentOut(BaseModel):
    id: uuid.UUID
    title: str
    filename: str
    content_type: str
    size_bytes: int
    status: DocumentStatus
    error: str | None
    chunk_count: int
    run_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, document: KnowledgeDocument) -> DocumentOut:
        return cls.model_validate(document, from_attributes=True)


class DocumentAccepted(BaseModel):
    document: DocumentOut
    task_id: uuid.UUID


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    next_cursor: str | None


class EntityOut(BaseModel):
    name: str


class DocumentGraph(BaseModel):
    document_id: uuid.UUID
    title: str
    chunks: int
    entities: list[str]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=5, ge=1, le=100)
    document_ids: list[uuid.UUID] | None = Field(default=None, max_length=100)


class SearchHit(BaseModel):
    document_id: uuid.UUID
    title: str
    chunk_index: int
    start: int
    end: int
    snippet: str
    score: float


class SearchResponse(BaseModel):
    query: str
    hits: list[SearchHit]


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(default=None, ge=1, le=50)
    document_ids: list[uuid.UUID] | None = Field(default=None, max_length=100)
    stream: bool = False


class Citation(BaseModel):
    document_id: uuid.UUID
    title: str
    chunk_index: int


class AnswerResponse(BaseModel):
    answer: str
    citations: list[Citation]
    model: str
