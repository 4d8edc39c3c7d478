"""run list indexes: a tenant's runs newest first by state and by task (the console's filters)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 23:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_task_runs_tenant_id_state_created_at", "task_runs", ["tenant_id", "state", "created_at"]
    )
    op.create_index(
        "ix_task_runs_tenant_id_task_created_at", "task_runs", ["tenant_id", "task", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_task_runs_tenant_id_task_created_at", table_name="task_runs")
    op.drop_index("ix_task_runs_tenant_id_state_created_at", table_name="task_runs")
