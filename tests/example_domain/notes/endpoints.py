"""/api/v1/notes: create (queues notes.count_words), list, read, delete."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Query, status

from switchyard.auth.dependencies import TenantDep, require_scope
from switchyard.platform.dependencies import SessionDep
from switchyard.tasks.dependencies import SubmitterDep
from tests.example_domain.notes import service
from tests.example_domain.notes.repository import NoteRepository
from tests.example_domain.notes.schemas import NoteCreated, NoteIn, NoteOut, NotePage

router = APIRouter(prefix="/notes", tags=["notes"])
READ = [Depends(require_scope("documents:read"))]
WRITE = [Depends(require_scope("documents:write"))]


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=WRITE)
async def create_note(
    body: NoteIn, session: SessionDep, tenant_id: TenantDep, submit: SubmitterDep
) -> NoteCreated:
    note, task_id = await service.create(session, tenant_id, body, submit)
    return NoteCreated(note=NoteOut.model_validate(note), task_id=task_id)


@router.get("", dependencies=READ)
async def list_notes(
    session: SessionDep,
    tenant_id: TenantDep,
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=200),
) -> NotePage:
    notes = NoteRepository(session, tenant_id)
    page, next_cursor = await notes.page(notes.select(), cursor, limit)
    return NotePage(items=[NoteOut.model_validate(note) for note in page], next_cursor=next_cursor)


@router.get("/{note_id}", dependencies=READ)
async def get_note(note_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> NoteOut:
    return NoteOut.model_validate(await NoteRepository(session, tenant_id).get_or_404(note_id))


@router.delete("/{note_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=WRITE)
async def delete_note(note_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> None:
    await session.delete(await NoteRepository(session, tenant_id).get_or_404(note_id))
