"""Bodies of /audit-events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEventOut(BaseModel):
    id: uuid.UUID
    action: str
    actor: str
    target_type: str | None
    target_id: str | None
    request_id: str | None
    address: str | None
    details: dict[str, Any]
    created_at: datetime


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None
