"""knowledge documents: latest ingestion run and uploader

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("knowledge_documents", sa.Column("run_id", sa.Uuid(), nullable=True))
    op.add_column("knowledge_documents", sa.Column("created_by", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("knowledge_documents", "created_by")
    op.drop_column("knowledge_documents", "run_id")
