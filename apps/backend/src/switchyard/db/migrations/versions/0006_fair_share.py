"""fair share: runs wait for a slot of their tenant's share (admitted_at), per-tenant caps

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = "admitted_at IS NULL AND state = 'queued'"
IN_FLIGHT = "admitted_at IS NOT NULL AND state IN ('queued', 'started', 'retrying')"


def upgrade() -> None:
    op.add_column("task_runs", sa.Column("admitted_at", sa.DateTime(timezone=True)))
    # Every run that exists already was published without a share: it counts as admitted.
    op.execute("UPDATE task_runs SET admitted_at = COALESCE(published_at, created_at)")
    op.create_index(
        "ix_task_runs_waiting",
        "task_runs",
        ["tenant_id", "created_at"],
        postgresql_where=sa.text(WAITING),
    )
    op.create_index(
        "ix_task_runs_in_flight", "task_runs", ["tenant_id"], postgresql_where=sa.text(IN_FLIGHT)
    )
    op.add_column("tenants", sa.Column("max_runs_in_flight", sa.Integer()))
    op.create_check_constraint(
        op.f("ck_tenants_max_runs_in_flight_positive"), "tenants", "max_runs_in_flight > 0"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenants_max_runs_in_flight_positive"), "tenants", type_="check")
    op.drop_column("tenants", "max_runs_in_flight")
    op.drop_index("ix_task_runs_in_flight", table_name="task_runs", postgresql_where=IN_FLIGHT)
    op.drop_index("ix_task_runs_waiting", table_name="task_runs", postgresql_where=WAITING)
    op.drop_column("task_runs", "admitted_at")
