"""Rules of notes: a new note is stored with its word count queued, in one unit of work."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.tasks.dependencies import RunSubmitter
from switchyard.tasks.schemas import RunRequest
from tests.example_domain.notes.models import Note
from tests.example_domain.notes.repository import NoteRepository
from tests.example_domain.notes.schemas import NoteIn

COUNT_WORDS = "notes.count_words"


async def create(
    session: AsyncSession, tenant_id: uuid.UUID, body: NoteIn, submit: RunSubmitter
) -> tuple[Note, uuid.UUID]:
    """The note and its notes.count_words run, committed together; the run is published after
    the commit (a broker that refuses it takes the note back too: 503, nothing stored)."""
    note = Note(id=uuid.uuid4(), tenant_id=tenant_id, title=body.title, body=body.body)
    session.add(note)
    await session.flush()
    await session.refresh(note)
    run, _ = await submit(RunRequest(task=COUNT_WORDS, payload={"note_id": str(note.id)}))
    return note, run.id


async def count_words(session: AsyncSession, tenant_id: uuid.UUID, note_id: uuid.UUID) -> int:
    note = await NoteRepository(session, tenant_id).get_or_404(note_id)
    note.word_count = len(note.body.split())
    return note.word_count
