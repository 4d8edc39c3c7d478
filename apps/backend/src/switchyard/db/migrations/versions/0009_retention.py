"""retention: per-tenant overrides, and definitions' next tick (beat reads only the due ones)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("run_retention_days", sa.Integer()))
    op.add_column("tenants", sa.Column("dead_letter_retention_days", sa.Integer()))
    op.add_column("task_definitions", sa.Column("next_due_at", sa.DateTime(timezone=True)))
    # Every schedule is due at once: beat works out its next tick on its next pass.
    op.execute(
        "UPDATE task_definitions SET next_due_at = '1970-01-01T00:00:00Z' "
        "WHERE schedule IS NOT NULL"
    )
    op.create_check_constraint(
        op.f("ck_task_definitions_schedule_planned"),
        "task_definitions",
        "schedule IS NULL OR next_due_at IS NOT NULL",
    )
    for column in ("run_retention_days", "dead_letter_retention_days"):
        op.create_check_constraint(
            op.f(f"ck_tenants_{column}_range"), "tenants", f"{column} BETWEEN 0 AND 3650"
        )


def downgrade() -> None:
    for column in ("dead_letter_retention_days", "run_retention_days"):
        op.drop_constraint(op.f(f"ck_tenants_{column}_range"), "tenants", type_="check")
        op.drop_column("tenants", column)
    op.drop_constraint(
        op.f("ck_task_definitions_schedule_planned"), "task_definitions", type_="check"
    )
    op.drop_column("task_definitions", "next_due_at")
