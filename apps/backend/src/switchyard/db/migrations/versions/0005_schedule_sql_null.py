"""task definitions: no schedule is SQL NULL, never the JSON value null

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE task_definitions SET schedule = NULL WHERE jsonb_typeof(schedule) <> 'object'"
    )
    op.create_check_constraint(
        op.f("ck_task_definitions_schedule_object"),
        "task_definitions",
        "jsonb_typeof(schedule) = 'object'",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("ck_task_definitions_schedule_object"), "task_definitions", type_="check"
    )
