"""workflow runs: a run of a workflow version, its steps, and its steps' runs in the ledger

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 20:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("definition_id", sa.Uuid(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="workflow_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("steps_left", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("submitted_by", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
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
        sa.ForeignKeyConstraint(
            ["definition_id"],
            ["workflow_definitions.id"],
            name=op.f("fk_workflow_runs_definition_id_workflow_definitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_workflow_runs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_runs")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_workflow_runs_tenant_id_idempotency_key")
        ),
    )
    op.create_index(
        op.f("ix_workflow_runs_definition_id"), "workflow_runs", ["definition_id"], unique=False
    )
    op.create_index(
        "ix_workflow_runs_finished",
        "workflow_runs",
        ["tenant_id", "finished_at"],
        unique=False,
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_index(
        "ix_workflow_runs_tenant_id_created_at",
        "workflow_runs",
        ["tenant_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "workflow_steps",
        sa.Column("workflow_run_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "waiting",
                "running",
                "succeeded",
                "failed",
                "skipped",
                "cancelled",
                name="workflow_step_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("parents_left", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=True),
        sa.Column("items_left", sa.Integer(), nullable=True),
        sa.Column("failed_items", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
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
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_workflow_steps_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_workflow_steps_workflow_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_steps")),
        sa.UniqueConstraint(
            "workflow_run_id", "name", name=op.f("uq_workflow_steps_workflow_run_id_name")
        ),
    )
    # Nullable, no default: added without rewriting the ledger. The foreign key is added NOT
    # VALID (no scan under a lock that stops writes) and validated apart (a scan that does
    # not); the index is built concurrently.
    op.add_column("task_runs", sa.Column("workflow_step_id", sa.Uuid(), nullable=True))
    op.add_column("task_runs", sa.Column("item_index", sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f("fk_task_runs_workflow_step_id_workflow_steps"),
        "task_runs",
        "workflow_steps",
        ["workflow_step_id"],
        ["id"],
        ondelete="CASCADE",
        postgresql_not_valid=True,
    )
    op.execute(
        "ALTER TABLE task_runs VALIDATE CONSTRAINT fk_task_runs_workflow_step_id_workflow_steps"
    )
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_task_runs_workflow_step",
            "task_runs",
            ["workflow_step_id", "item_index"],
            postgresql_where=sa.text("workflow_step_id IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_task_runs_workflow_step",
            table_name="task_runs",
            postgresql_where=sa.text("workflow_step_id IS NOT NULL"),
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_constraint(
        op.f("fk_task_runs_workflow_step_id_workflow_steps"), "task_runs", type_="foreignkey"
    )
    op.drop_column("task_runs", "item_index")
    op.drop_column("task_runs", "workflow_step_id")
    op.drop_table("workflow_steps")
    op.drop_index("ix_workflow_runs_tenant_id_created_at", table_name="workflow_runs")
    op.drop_index(
        "ix_workflow_runs_finished",
        table_name="workflow_runs",
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.drop_index(op.f("ix_workflow_runs_definition_id"), table_name="workflow_runs")
    op.drop_table("workflow_runs")
