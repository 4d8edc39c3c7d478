"""tenant deletions (schedule and tombstone), and the `deleting` status of a tenant

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "cancelled_at IS NULL AND finished_at IS NULL"


def _status(*values: str) -> None:
    op.drop_constraint(op.f("ck_tenants_tenant_status"), "tenants", type_="check")
    listed = ", ".join(f"'{value}'" for value in values)
    op.create_check_constraint(op.f("ck_tenants_tenant_status"), "tenants", f"status IN ({listed})")


def upgrade() -> None:
    _status("active", "suspended", "deleting")
    op.create_table(
        "tenant_deletions",
        sa.Column("target_tenant_id", sa.Uuid(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("delete_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_by", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "removed", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_deletions")),
    )
    op.create_index(
        "ix_tenant_deletions_open",
        "tenant_deletions",
        ["target_tenant_id"],
        unique=True,
        postgresql_where=sa.text(OPEN),
    )
    op.create_index(
        "ix_tenant_deletions_due",
        "tenant_deletions",
        ["delete_after"],
        unique=False,
        postgresql_where=sa.text(OPEN),
    )


def downgrade() -> None:
    op.drop_index("ix_tenant_deletions_due", table_name="tenant_deletions")
    op.drop_index("ix_tenant_deletions_open", table_name="tenant_deletions")
    op.drop_table("tenant_deletions")
    op.execute("UPDATE tenants SET status = 'suspended' WHERE status = 'deleting'")
    _status("active", "suspended")
