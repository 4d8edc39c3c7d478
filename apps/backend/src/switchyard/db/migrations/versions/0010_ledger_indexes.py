"""ledger indexes: retention, the runs' foreign keys, beat's outbox and due definitions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 07:10:00

Built CONCURRENTLY, outside a transaction, so migrating a large ledger does not stop the runs'
writes while they build (a revision of its own: 0009's changes are committed before). An
interrupted build can leave an index marked invalid, which `IF NOT EXISTS` would keep: see
docs/operations.md, "Retention and the size of the ledger".
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "state IN ('succeeded', 'failed', 'dead_lettered', 'cancelled')"
KEYED = "idempotency_key IS NOT NULL"
REPLAY = "replay_of IS NOT NULL"
REPLAYED = "replayed_run_id IS NOT NULL"
SCHEDULED = "enabled AND schedule IS NOT NULL"
OUTBOX = "published_at IS NULL AND (admitted_at IS NOT NULL OR state = 'scheduled')"
UNPUBLISHED = "published_at IS NULL"

INDEXES = (
    # Retention: a tenant's final runs, oldest finished first.
    ("ix_task_runs_finished", "task_runs", ["tenant_id", "finished_at"], FINAL),
    # Idempotency keys' expiry: keyed runs, oldest first.
    ("ix_task_runs_keyed", "task_runs", ["created_at"], KEYED),
    # The foreign keys' ON DELETE SET NULL when a run is deleted: without these, every
    # deleted run scans the table that points at it.
    ("ix_task_runs_replay_of", "task_runs", ["replay_of"], REPLAY),
    ("ix_dead_letters_replayed_run_id", "dead_letters", ["replayed_run_id"], REPLAYED),
    # Beat's outbox: unpublished runs, not the ones waiting for their tenant's share (which
    # ix_task_runs_unpublished held too, and the scan read them all).
    ("ix_task_runs_outbox", "task_runs", ["created_at"], OUTBOX),
    # Beat's scan for due definitions.
    ("ix_task_definitions_due", "task_definitions", ["next_due_at"], SCHEDULED),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, columns, where in INDEXES:
            op.create_index(
                name,
                table,
                columns,
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        op.drop_index(
            "ix_task_runs_unpublished",
            table_name="task_runs",
            postgresql_where=UNPUBLISHED,
            postgresql_concurrently=True,
            if_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_task_runs_unpublished",
            "task_runs",
            ["created_at"],
            postgresql_where=sa.text(UNPUBLISHED),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        for name, table, _, where in reversed(INDEXES):
            op.drop_index(
                name,
                table_name=table,
                postgresql_where=where,
                postgresql_concurrently=True,
                if_exists=True,
            )
