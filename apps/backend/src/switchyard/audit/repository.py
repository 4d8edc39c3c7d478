"""Queries of the audit log within one tenant."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select

from switchyard.db.models import AuditEvent
from switchyard.db.repository import TenantRepository


class AuditRepository(TenantRepository[AuditEvent]):
    model = AuditEvent
    not_found = "No audit event {id}."

    def filtered(
        self,
        action: str | None,
        actor: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Select[AuditEvent]:
        criteria = []
        if action is not None:
            criteria.append(AuditEvent.action == action)
        if actor is not None:
            criteria.append(AuditEvent.actor == actor)
        if since is not None:
            criteria.append(AuditEvent.created_at >= since)
        if until is not None:
            criteria.append(AuditEvent.created_at < until)
        return self.select(*criteria)
