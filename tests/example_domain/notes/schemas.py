"""Bodies of /notes, and the input of notes.count_words."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=100_000)


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # NoteOut.model_validate(note)

    id: uuid.UUID
    title: str
    body: str
    word_count: int | None = Field(description="Set by notes.count_words; null until it ran")
    created_at: datetime


class NoteCreated(BaseModel):
    note: NoteOut
    task_id: uuid.UUID = Field(description="The notes.count_words run (GET /tasks/{task_id})")


class NotePage(BaseModel):
    items: list[NoteOut]
    next_cursor: str | None


class CountWordsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note_id: uuid.UUID
