"""notes.count_words: count a note's words into the note (takes an id, calls the service)."""

from __future__ import annotations

from typing import Any

from switchyard.platform.registry import TaskContext, task
from tests.example_domain.notes import service
from tests.example_domain.notes.schemas import CountWordsInput


@task(
    service.COUNT_WORDS,
    input=CountWordsInput,
    description="Count the words of a note into it",
    access="internal",  # POST /notes starts it
    scope="documents:write",
)
async def count_words(payload: CountWordsInput, ctx: TaskContext) -> dict[str, Any]:
    async with ctx.services.database_sessions.begin() as session:
        words = await service.count_words(session, ctx.tenant_id, payload.note_id)
    return {"note_id": str(payload.note_id), "words": words}
