"""Queries of notes, each within one tenant."""

from __future__ import annotations

from switchyard.db.repository import TenantRepository
from tests.example_domain.notes.models import Note


class NoteRepository(TenantRepository[Note]):
    model = Note
    not_found = "No note {id}."
