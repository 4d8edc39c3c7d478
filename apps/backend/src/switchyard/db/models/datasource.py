from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from switchyard.db.base import Base, Timestamps, UUIDPrimaryKey


class DataSourceConnection(UUIDPrimaryKey, Timestamps, Base):
    """A tenant's connection to an external data source; the URL is stored encrypted."""

    __tablename__ = "data_source_connections"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    encrypted_connection_url: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[uuid.UUID | None]
