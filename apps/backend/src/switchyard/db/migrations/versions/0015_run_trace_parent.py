"""a run's W3C traceparent: the trace of the request that submitted it (TRACING on)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds it without rewriting the table.
    op.add_column("task_runs", sa.Column("trace_parent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    op.drop_column("task_runs", "trace_parent")
