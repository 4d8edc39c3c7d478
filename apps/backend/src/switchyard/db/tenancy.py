"""Tenant isolation: every query of a tenant-owned model starts here, filtered by tenant."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import Select, Table, select

from switchyard.db.base import Base

M = TypeVar("M", bound=Base)


def tenant_owned(model: type[Base]) -> bool:
    return "tenant_id" in model.__table__.c


def scoped(model: type[M], tenant_id: uuid.UUID, *criteria: Any) -> Select[M]:
    """`SELECT model WHERE tenant_id = :tenant_id AND criteria...`; refuses shared models."""
    if not tenant_owned(model):
        raise TypeError(f"{model.__name__} is not tenant-owned")
    column = model.__table__.c.tenant_id
    return select(model).where(column == tenant_id, *criteria)


def tenant_owned_tables() -> list[Table]:
    """Every table of the main database with a `tenant_id` (what a tenant's export and its
    deletion cover), in dependency order."""
    return [table for table in Base.metadata.sorted_tables if "tenant_id" in table.c]
