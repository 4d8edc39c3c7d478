"""plans, and a tenant's plan and its own limits

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = (
    ("llm_tokens_per_month", sa.BigInteger()),
    ("llm_tokens_per_day", sa.BigInteger()),
    ("runs_per_month", sa.BigInteger()),
    ("runs_per_day", sa.BigInteger()),
    ("run_seconds_per_month", sa.BigInteger()),
    ("stored_bytes", sa.BigInteger()),
    ("documents", sa.BigInteger()),
    ("api_requests_per_minute", sa.Integer()),
    ("task_runs_per_minute", sa.Integer()),
    ("runs_in_flight", sa.Integer()),
)


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=500), server_default="", nullable=False),
        *(sa.Column(name, kind, nullable=True) for name, kind in LIMITS),
        sa.Column("soft_limit_percent", sa.SmallInteger(), server_default="80", nullable=False),
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
        *(
            sa.CheckConstraint(f"{name} >= 0", name=op.f(f"ck_plans_{name}_not_negative"))
            for name, _ in LIMITS
        ),
        sa.CheckConstraint(
            "soft_limit_percent BETWEEN 1 AND 100", name=op.f("ck_plans_soft_limit_percent_range")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("name", name=op.f("uq_plans_name")),
    )
    op.add_column("tenants", sa.Column("plan_id", sa.Uuid(), nullable=True))
    op.add_column(
        "tenants",
        sa.Column(
            "limit_overrides",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
    )
    op.create_foreign_key(
        op.f("fk_tenants_plan_id_plans"),
        "tenants",
        "plans",
        ["plan_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_table(
        "llm_reservations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_llm_reservations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_reservations")),
    )
    op.create_index(
        op.f("ix_llm_reservations_tenant_id"), "llm_reservations", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_llm_reservations_tenant_id"), table_name="llm_reservations")
    op.drop_table("llm_reservations")
    op.drop_constraint(op.f("fk_tenants_plan_id_plans"), "tenants", type_="foreignkey")
    op.drop_column("tenants", "limit_overrides")
    op.drop_column("tenants", "plan_id")
    op.drop_table("plans")
