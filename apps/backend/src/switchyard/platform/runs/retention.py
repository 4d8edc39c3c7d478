"""Retention: beat removes what has outlived its setting, in bounded batches.

- Final runs go RUN_RETENTION_DAYS after they finished (a tenant's own `run_retention_days`
  first). A run whose dead letter is still archived stays until the letter goes: the letter
  is what an operator replays, and its run is its history. A replay of a deleted run keeps
  its own row, with `replay_of` cleared (the foreign key's ON DELETE SET NULL, served by an
  index). A definition's runs go like any other; the definition keeps `last_scheduled_for`, so
  beat never schedules an expired tick again.
- A workflow run goes as one unit, its steps and their runs with it, as long after it ended
  (and not while a dead letter of one of its runs is archived); its runs never go alone.
- Dead letters go DEAD_LETTER_RETENTION_DAYS after they were archived (or the tenant's own).
- Idempotency keys are cleared IDEMPOTENCY_KEY_HOURS after their run was submitted, once the
  run is final (a client retrying while its run is still pending never gets a second run);
  the replay key of a dead letter stays with its run ("one run per letter").

Each batch is one short transaction: the rows are picked with `FOR UPDATE SKIP LOCKED` (a run
a worker or a request holds is left for the next pass, never waited for), at most
RETENTION_BATCH_ROWS of them, through an index (`ix_task_runs_finished`, `ix_task_runs_keyed`,
`ix_dead_letters_tenant_id_created_at`) per tenant. Between batches the job rests
RETENTION_REST_RATIO times as long as the batch took (9: at most a tenth of one connection's
time). 0 keeps for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any, Final

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.models.task_run import FINAL
from switchyard.platform.metrics import RETENTION_DELETED
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

RETENTION_KINDS: Final = frozenset({"dead_letters", "runs", "workflow_runs", "idempotency_keys"})

# A batch never waits long for a lock (the foreign keys' SET NULL touches dead letters and
# replays), nor runs long: either fails the pass, and the next pass starts over.
_LIMITS: Final = (
    text("SET LOCAL lock_timeout = '2s'"),
    text("SET LOCAL statement_timeout = '60s'"),
)

_RUNS = text(
    f"""
    WITH expired AS (
        SELECT run.id
        FROM tenants AS t
        CROSS JOIN LATERAL (
            SELECT r.id FROM task_runs AS r
            WHERE r.tenant_id = t.id
              AND {FINAL}
              AND r.finished_at
                  < now() - make_interval(days => COALESCE(t.run_retention_days, :days))
              AND NOT EXISTS (SELECT 1 FROM dead_letters AS d WHERE d.run_id = r.id)
              AND r.workflow_step_id IS NULL
            ORDER BY r.finished_at
            LIMIT :rows
            FOR UPDATE OF r SKIP LOCKED
        ) AS run
        WHERE COALESCE(t.run_retention_days, :days) > 0
        LIMIT :rows
    )
    DELETE FROM task_runs WHERE id IN (SELECT id FROM expired)
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)
# A workflow run goes as a unit: its steps and their runs with it (the foreign keys' ON DELETE
# CASCADE), once it has ended and none of its runs has a dead letter archived.
_WORKFLOW_RUNS = text(
    """
    WITH expired AS (
        SELECT workflow.id
        FROM tenants AS t
        CROSS JOIN LATERAL (
            SELECT w.id FROM workflow_runs AS w
            WHERE w.tenant_id = t.id
              AND w.finished_at IS NOT NULL
              AND w.finished_at
                  < now() - make_interval(days => COALESCE(t.run_retention_days, :days))
              AND NOT EXISTS (
                  SELECT 1 FROM workflow_steps AS s
                  JOIN task_runs AS r ON r.workflow_step_id = s.id
                  JOIN dead_letters AS d ON d.run_id = r.id
                  WHERE s.workflow_run_id = w.id
              )
            ORDER BY w.finished_at
            LIMIT :rows
            FOR UPDATE OF w SKIP LOCKED
        ) AS workflow
        WHERE COALESCE(t.run_retention_days, :days) > 0
        LIMIT :rows
    )
    DELETE FROM workflow_runs WHERE id IN (SELECT id FROM expired)
    """
)
_DEAD_LETTERS = text(
    """
    WITH expired AS (
        SELECT letter.id
        FROM tenants AS t
        CROSS JOIN LATERAL (
            SELECT d.id FROM dead_letters AS d
            WHERE d.tenant_id = t.id
              AND d.created_at
                  < now() - make_interval(days => COALESCE(t.dead_letter_retention_days, :days))
            ORDER BY d.created_at
            LIMIT :rows
            FOR UPDATE OF d SKIP LOCKED
        ) AS letter
        WHERE COALESCE(t.dead_letter_retention_days, :days) > 0
        LIMIT :rows
    )
    DELETE FROM dead_letters WHERE id IN (SELECT id FROM expired)
    """
)
_KEYS = text(
    f"""
    UPDATE task_runs SET idempotency_key = NULL, request_hash = NULL
    WHERE id IN (
        SELECT id FROM task_runs
        WHERE idempotency_key IS NOT NULL
          AND created_at < now() - make_interval(hours => :hours)
          AND {FINAL}
          AND idempotency_key NOT LIKE 'replay:%'
        ORDER BY created_at
        LIMIT :rows
        FOR UPDATE SKIP LOCKED
    )
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)


def tenant_rows(table: str, tenant_id: uuid.UUID, rows: int) -> Batch:
    """Every row of a tenant's in `table` (its deletion), a batch at a time, whether or not it
    has expired. The audit log lets them go (its append-only trigger reads the flag)."""
    statement = text(
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("  # noqa: S608 - a table of the metadata
        f"SELECT ctid FROM {table} WHERE tenant_id = :tenant LIMIT :rows FOR UPDATE))"
    )
    prelude = (text("SET LOCAL switchyard.audit_purge = 'on'"),)
    return Batch(table, statement, {"tenant": tenant_id, "rows": rows}, prelude)


@dataclass
class Expired:
    """What one pass removed."""

    dead_letters: int = 0
    runs: int = 0
    workflow_runs: int = 0
    idempotency_keys: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, field.name) for field in fields(self))


async def _batch(engine: AsyncEngine, batch: Batch) -> int:
    async with engine.begin() as connection:
        for limit in _LIMITS + batch.prelude:
            await connection.execute(limit)
        result = await connection.execute(batch.statement, batch.values)
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True, slots=True)
class Batch:
    """One kind of expired rows: the statement that removes a batch of them, and its values
    (`rows`: the most one batch removes); `prelude`, statements run before it in its
    transaction."""

    kind: str
    statement: TextClause
    values: dict[str, Any]
    prelude: tuple[TextClause, ...] = ()


def batches(settings: Settings) -> list[Batch]:
    """In the order a pass runs them: dead letters first (a run whose letter just went can go
    in the same pass), then runs, then the keys of the runs that stay. Keys go a quarter as
    many at a time: clearing one rewrites its run and every index entry of it, about three
    times what deleting a run costs."""
    rows = settings.retention_batch_rows
    found = [
        Batch(
            "dead_letters",
            _DEAD_LETTERS,
            {"days": settings.dead_letter_retention_days, "rows": rows},
        ),
        Batch("runs", _RUNS, {"days": settings.run_retention_days, "rows": rows}),
        # A workflow run holds many rows (its steps' runs): a tenth as many at a time.
        Batch(
            "workflow_runs",
            _WORKFLOW_RUNS,
            {"days": settings.run_retention_days, "rows": max(1, rows // 10)},
        ),
    ]
    if settings.idempotency_key_hours > 0:
        values = {"hours": settings.idempotency_key_hours, "rows": max(1, rows // 4)}
        found.append(Batch("idempotency_keys", _KEYS, values))
    return found


async def drain(engine: AsyncEngine, batch: Batch, rest_ratio: float) -> int:
    """Batches of one kind until one comes back short (nothing more has expired, or the rest
    is locked); how many rows went. After each, a rest `rest_ratio` times as long as it took."""
    removed = 0
    while True:
        started = time.monotonic()
        count = await _batch(engine, batch)
        removed += count
        if batch.kind in RETENTION_KINDS:
            RETENTION_DELETED.labels(kind=batch.kind).inc(count)
        if count < batch.values["rows"]:
            return removed
        if rest_ratio:
            await asyncio.sleep(rest_ratio * (time.monotonic() - started))


async def expire(engine: AsyncEngine, settings: Settings, *, rest: bool = True) -> Expired:
    """One pass over every kind; what it removed."""
    expired = Expired()
    ratio = settings.retention_rest_ratio if rest else 0.0
    for batch in batches(settings):
        setattr(expired, batch.kind, await drain(engine, batch, ratio))
    if expired.total:
        logger.info(
            "expired rows removed",
            extra={field.name: getattr(expired, field.name) for field in fields(expired)},
        )
    return expired
