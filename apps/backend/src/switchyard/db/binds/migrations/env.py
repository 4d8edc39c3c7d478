"""Alembic environment for the extra binds: the bind's name picks its metadata and its
version table (`alembic_version_<name>`); the connection is handed in by `migrate_bind`."""

from __future__ import annotations

from alembic import context

from switchyard.db.binds import BIND_BASES
from switchyard.db.binds.models import UsageCounterCopy, UsageEvent  # noqa: F401  (registers the models)

name = context.config.attributes["bind"]
connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=BIND_BASES[name].metadata,
    version_table=f"alembic_version_{name}",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
