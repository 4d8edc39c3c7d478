"""Bodies of /llm and /graph."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from switchyard.services.llm import ChatMessage


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=100)
    model: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    temperature: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    stream: bool = False


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    content: str
    model: str
    finish_reason: str | None
    usage: UsageOut


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: list[str] = Field(min_length=1, max_length=256)


class EmbeddingsResponse(BaseModel):
    model: str
    data: list[list[float]]
    usage: UsageOut


class EntityOut(BaseModel):
    name: str
    kind: str
    mentions: int


class EntityPage(BaseModel):
    items: list[EntityOut]
