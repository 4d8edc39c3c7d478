"""The run ledger: every state change of a `task_runs` row goes through here."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, partial
from typing import Any, Protocol, cast

from sqlalchemy import (
    CTE,
    BigInteger,
    Boolean,
    ColumnElement,
    Row,
    Select,
    String,
    Table,
    Text,
    Update,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    column,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from switchyard.db.engine import in_transaction, once_more_if_dropped
from switchyard.db.models import (
    FINAL_STATES,
    RunState,
    TaskRun,
    WorkflowRun,
    WorkflowState,
    WorkflowStep,
)
from switchyard.db.models.task_run import OUTBOX
from switchyard.platform.coalesce import Coalescer
from switchyard.services import usage

logger = logging.getLogger(__name__)

CLAIMABLE = (RunState.QUEUED, RunState.SCHEDULED, RunState.RETRYING)
MAX_ERROR_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class RunChange:
    """A run as one ledger update left it: what the worker needs to go on."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    state: RunState
    attempts: int
    payload: dict[str, Any]
    request_id: str | None
    # A workflow step's run: its step and item (platform.workflows), and its last error.
    workflow_step_id: uuid.UUID | None = None
    item_index: int | None = None
    error_message: str | None = None

    @classmethod
    def of(cls, run: TaskRun) -> RunChange:
        return cls(
            run.id,
            run.tenant_id,
            RunState(run.state),
            run.attempts,
            run.payload,
            run.request_id,
            run.workflow_step_id,
            run.item_index,
            run.error_message,
        )


_RUNS = cast(Table, TaskRun.__table__)
_CHANGED = (
    _RUNS.c.id,
    _RUNS.c.tenant_id,
    _RUNS.c.state,
    _RUNS.c.attempts,
    _RUNS.c.payload,
    _RUNS.c.request_id,
    _RUNS.c.workflow_step_id,
    _RUNS.c.item_index,
    _RUNS.c.error_message,
)


@cache
def _claim_statement(redelivered: bool, of_tenant: bool) -> Update:
    """Built once per shape: a worker claims runs in a tight loop, and building a statement
    costs more CPU than the database spends on it."""
    # Only a run admitted to its tenant's share (platform.runs.admission) starts; a delayed run
    # comes due unadmitted, and the worker admits (or parks) it first.
    claimable: ColumnElement[bool] = and_(
        _RUNS.c.state.in_(CLAIMABLE), _RUNS.c.admitted_at.is_not(None)
    )
    if redelivered:
        claimable = or_(claimable, _RUNS.c.state == RunState.STARTED)
    if of_tenant:
        claimable = and_(claimable, _RUNS.c.tenant_id == bindparam("of_tenant"))
    return (
        update(_RUNS)
        .where(_RUNS.c.id == bindparam("run_id"), claimable)
        .values(
            state=RunState.STARTED,
            attempts=_RUNS.c.attempts + 1,
            started_at=func.coalesce(_RUNS.c.started_at, func.now()),
        )
        .returning(*_CHANGED)
    )


def _change(row: Row[Any] | None) -> RunChange | None:
    return None if row is None else RunChange(**row._mapping)


async def claim(
    connection: AsyncConnection,
    run_id: uuid.UUID,
    *,
    redelivered: bool,
    tenant_id: uuid.UUID | None = None,
) -> RunChange | None:
    """Move a run to `started` and count the attempt, unless it is final or already running
    (or, with `tenant_id`, belongs to another tenant). One statement.

    A redelivered message may take over a `started` run: its worker died mid-task."""
    statement = _claim_statement(redelivered, tenant_id is not None)
    values: dict[str, Any] = {"run_id": run_id}
    if tenant_id is not None:
        values["of_tenant"] = tenant_id
    return _change((await connection.execute(statement, values)).one_or_none())


def in_id_order(*where: ColumnElement[bool]) -> CTE:
    """The rows a multi-row write changes, locked first in id order (`locked.id`).

    Every statement that changes many runs joins this instead of locking rows as its plan
    reaches them (an index scan, a bitmap scan and a join each go their own way): two writes
    of the same rows then always lock them in the same order and never deadlock each other."""
    return (
        select(_RUNS.c.id)
        .where(*where)
        .order_by(_RUNS.c.id)
        .with_for_update(key_share=True)
        .cte("locked")
    )


async def claim_group(
    connection: AsyncConnection, runs: list[tuple[uuid.UUID, uuid.UUID]], *, redelivered: bool
) -> dict[uuid.UUID, RunChange]:
    """`claim` for many (run, tenant) pairs in one statement: the runs claimed, by id. A run
    not among them is claimed (or explained) by `claim` alone."""
    parameters = {"ids": [run_id for run_id, _ in runs], "tenants": [t for _, t in runs]}
    rows = await connection.execute(_claim_group_statement(redelivered), parameters)
    return {row.id: RunChange(**row._mapping) for row in rows}


@cache
def _claim_group_statement(redelivered: bool) -> Update:
    """Built once per shape, one statement text whatever the group's size (arrays, not lists
    of parameters): its plan does not change with the size, the driver prepares it once, and
    no group pays for building and compiling it."""
    ids = bindparam("ids", type_=ARRAY(Uuid))
    pairs = (
        func.unnest(ids, bindparam("tenants", type_=ARRAY(Uuid)))
        .table_valued("id", "tenant_id")
        .render_derived(name="given")
    )
    locked = in_id_order(
        # The ids alone first: the primary key finds the rows, whatever else the planner
        # thinks of the (run, tenant) pairs (a tenant's state index, say, which reads all of
        # a tenant's queued runs: its backlog waiting for its share too).
        _RUNS.c.id == any_(ids),
        tuple_(_RUNS.c.id, _RUNS.c.tenant_id).in_(select(pairs.c.id, pairs.c.tenant_id)),
        _RUNS.c.state.in_((*CLAIMABLE, RunState.STARTED) if redelivered else CLAIMABLE),
        _RUNS.c.admitted_at.is_not(None),
    )
    return (
        update(_RUNS)
        .where(_RUNS.c.id == locked.c.id)
        .values(
            state=RunState.STARTED,
            attempts=_RUNS.c.attempts + 1,
            started_at=func.coalesce(_RUNS.c.started_at, func.now()),
        )
        .returning(*_CHANGED)
    )


@dataclass(frozen=True, slots=True)
class Finish:
    """The outcome of one attempt, as `finish` records it."""

    run_id: uuid.UUID
    state: RunState
    result: Any = None
    error: BaseException | None = None
    elapsed_ms: int = 0  # the handler's time: the attempt's run.milliseconds (services.usage)
    # Whether the run is a workflow step's (its claim said), None when not known: a step's
    # outcome is recorded with its workflow's advance, in one transaction (StepHook).
    step: bool | None = False


async def finish_group(
    connection: AsyncConnection, outcomes: list[Finish], *, metered: bool = True
) -> dict[uuid.UUID, RunChange]:
    """`finish` for many runs in one statement (an UPDATE from the outcomes as arrays): the
    runs recorded, by id; one cancelled meanwhile is not among them. A result or an error not
    given leaves the stored one as it is.

    The same statement adds the attempts it records to their tenants' usage (run.attempts and
    run.milliseconds by task, services.usage): counted with the outcome, so exactly once;
    not `metered` (USAGE_METERING off), they are not counted."""
    errors = [outcome.error for outcome in outcomes]
    parameters = {
        "ids": [outcome.run_id for outcome in outcomes],
        "states": [outcome.state.value for outcome in outcomes],
        "results": [
            None if outcome.result is None else json.dumps(outcome.result) for outcome in outcomes
        ],
        "error_types": [None if error is None else type(error).__name__ for error in errors],
        "error_messages": [
            None if error is None else str(error)[:MAX_ERROR_MESSAGE] for error in errors
        ],
        "finals": [outcome.state.final for outcome in outcomes],
        "elapsed": [outcome.elapsed_ms for outcome in outcomes],
    }
    changed = await connection.execute(_finish_statement(metered), parameters)
    return {row.id: RunChange(**row._mapping) for row in changed}


@cache
def _finish_statement(metered: bool) -> Select[Any]:
    """Built once: one statement text whatever the group's size (arrays, not a VALUES list),
    so neither building nor compiling it costs anything per group (it cost more CPU than the
    database spent on it), and the driver prepares it once."""
    ids = bindparam("ids", type_=ARRAY(Uuid))
    given = (
        func.unnest(
            ids,
            bindparam("states", type_=ARRAY(String)),
            bindparam("results", type_=ARRAY(Text)),
            bindparam("error_types", type_=ARRAY(String)),
            bindparam("error_messages", type_=ARRAY(Text)),
            bindparam("finals", type_=ARRAY(Boolean)),
            bindparam("elapsed", type_=ARRAY(BigInteger)),
        )
        .table_valued(
            column("id", Uuid),
            column("state", String),
            column("result", Text),
            column("error_type", String),
            column("error_message", Text),
            column("final", Boolean),
            column("elapsed_ms", BigInteger),
        )
        .render_derived(name="outcome", with_types=False)
    )
    locked = in_id_order(_RUNS.c.id == any_(ids), _RUNS.c.state == RunState.STARTED)
    changed = (
        update(_RUNS)
        .where(_RUNS.c.id == given.c.id, _RUNS.c.id == locked.c.id)
        .values(
            state=given.c.state,
            result=func.coalesce(sql_cast(given.c.result, JSONB), _RUNS.c.result),
            error_type=func.coalesce(given.c.error_type, _RUNS.c.error_type),
            error_message=func.coalesce(given.c.error_message, _RUNS.c.error_message),
            finished_at=case((given.c.final, func.now()), else_=_RUNS.c.finished_at),
        )
        .returning(*_CHANGED, _RUNS.c.task, given.c.elapsed_ms.label("ms"))
        .cte("changed")
    )
    outcomes = select(*(changed.c[name] for name in _CHANGED_NAMES))
    if not metered:
        return outcomes
    return outcomes.add_cte(usage.add_from(_uses(changed)).cte("counted"))


_CHANGED_NAMES = tuple(column.name for column in _CHANGED)


def _uses(changed: CTE) -> Select[Any]:
    """The usage of the attempts `changed` records: per tenant and task, the attempts and
    their milliseconds."""
    attempts = select(
        changed.c.tenant_id,
        literal(usage.Meter.RUN_ATTEMPTS.value, String).label("meter"),
        changed.c.task.label("subject"),
        func.count().label("quantity"),
    ).group_by(changed.c.tenant_id, changed.c.task)
    milliseconds = select(
        changed.c.tenant_id,
        literal(usage.Meter.RUN_MILLISECONDS.value, String).label("meter"),
        changed.c.task.label("subject"),
        func.sum(changed.c.ms).label("quantity"),
    ).group_by(changed.c.tenant_id, changed.c.task)
    return select(union_all(attempts, milliseconds).subquery("uses"))


class StepHook(Protocol):
    """What a workflow step's outcome sets off (platform.workflows): `advance` in the
    transaction that records it, `after` once that has committed (best effort)."""

    async def advance(self, connection: AsyncConnection, changes: list[RunChange]) -> Any: ...

    async def after(self, advanced: Any) -> None: ...


class GroupWrites:
    """The claims and outcomes of the runs one worker process holds, written in groups: the
    runs that claim (or finish) within a few milliseconds of each other share one statement
    (platform.coalesce). Each caller still gets its own run's answer once the statement has
    committed, so a message is acked only after its outcome is stored, as before.

    One per engine (and so per process and loop): `of`."""

    _by_engine: dict[AsyncEngine, GroupWrites] = {}  # noqa: RUF012 - one registry per process

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        window_seconds: float,
        most: int,
        metered: bool = True,
        steps: StepHook | None = None,
    ) -> None:
        self.engine = engine
        self.metered = metered
        self.steps = steps
        self._claims: Coalescer[tuple[uuid.UUID, uuid.UUID], RunChange | None] = Coalescer(
            self._claim, window_seconds=window_seconds, most=most
        )
        self._finishes: Coalescer[Finish, RunChange | None] = Coalescer(
            self._finish, window_seconds=window_seconds, most=most
        )

    @classmethod
    def of(
        cls,
        engine: AsyncEngine,
        *,
        window_seconds: float,
        most: int,
        metered: bool = True,
        steps: StepHook | None = None,
    ) -> GroupWrites:
        writes = cls._by_engine.get(engine)
        if writes is None:
            writes = cls(
                engine, window_seconds=window_seconds, most=most, metered=metered, steps=steps
            )
            cls._by_engine[engine] = writes
        elif writes.steps is None:
            writes.steps = steps
        return writes

    async def claim(self, run_id: uuid.UUID, tenant_id: uuid.UUID) -> RunChange | None:
        """`claim` (not redelivered) of a run of `tenant_id`, in a group."""
        return await self._claims((run_id, tenant_id))

    async def finish(self, outcome: Finish) -> RunChange | None:
        """`finish`, in a group."""
        return await self._finishes(outcome)

    async def _claim(self, runs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[RunChange | None]:
        # Repeated after a dropped connection as a redelivery: if the first statement did
        # reach the database, these runs are `started` by us, and the repeat takes them over.
        claimed = await once_more_if_dropped(
            self.engine,
            lambda connection, retried: claim_group(connection, runs, redelivered=retried),
        )
        answers: list[RunChange | None] = []
        for run_id, _ in runs:  # a run delivered twice into one group starts once
            answers.append(claimed.pop(run_id, None))
        return answers

    async def _finish(self, outcomes: list[Finish]) -> list[RunChange | None]:
        plain = [o for o in outcomes if o.step is False or self.steps is None]
        finished: dict[uuid.UUID, RunChange] = {}
        if plain:
            finished = await once_more_if_dropped(  # safe to repeat: only `started` runs change
                self.engine,
                lambda connection, _: finish_group(connection, plain, metered=self.metered),
            )
        if len(plain) < len(outcomes):
            steps = [o for o in outcomes if not (o.step is False or self.steps is None)]
            finished |= await self._finish_steps(steps)
        return [finished.pop(outcome.run_id, None) for outcome in outcomes]

    async def _finish_steps(self, outcomes: list[Finish]) -> dict[uuid.UUID, RunChange]:
        """Workflow steps' outcomes, each recorded with its workflow's advance in one
        transaction; what that leaves to do after the commit, done then."""
        assert self.steps is not None
        hook = self.steps

        async def record(connection: AsyncConnection) -> tuple[dict[uuid.UUID, RunChange], Any]:
            changed = await finish_group(connection, outcomes, metered=self.metered)
            return changed, await hook.advance(connection, list(changed.values()))

        # Safe to repeat whole: only `started` runs change, and only they advance.
        changed, advanced = await in_transaction(self.engine, record, retry_dropped=True)
        try:
            await hook.after(advanced)
        except Exception as exc:  # the outbox and the sweeps publish what this did not
            logger.warning("workflow follow-ups not done", extra={"error": repr(exc)})
        return changed

    async def close(self) -> None:
        """Write what is pending (at shutdown) and forget the engine."""
        await self._claims.close()
        await self._finishes.close()
        self._by_engine.pop(self.engine, None)


_HAND_BACK = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("run_id"), _RUNS.c.state == RunState.STARTED)
    .values(state=RunState.QUEUED)
    .returning(*_CHANGED)
)


async def hand_back(connection: AsyncConnection, run_id: uuid.UUID) -> RunChange | None:
    """A `started` run its worker stopped before it finished (a shutdown) is `queued` again:
    its message goes back to the broker, and the next claim is an ordinary one."""
    return _change((await connection.execute(_HAND_BACK, {"run_id": run_id})).one_or_none())


async def started_attempts(connection: AsyncConnection, run_id: uuid.UUID) -> int | None:
    """The attempts of a `started` run (for a redelivered message: its last worker died in
    it), None for a run in any other state."""
    attempts = await connection.scalar(
        select(_RUNS.c.attempts).where(_RUNS.c.id == run_id, _RUNS.c.state == RunState.STARTED)
    )
    return None if attempts is None else int(attempts)


async def mark_dead_lettered(session: AsyncSession, run_id: uuid.UUID) -> TaskRun | None:
    """The broker gave up on a run the worker never concluded (a crash loop, say).

    A run that ended `failed` keeps that state: its dead letter is archived all the same."""
    statement = (
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.state.not_in(FINAL_STATES))
        .values(
            state=RunState.DEAD_LETTERED, finished_at=func.coalesce(TaskRun.finished_at, func.now())
        )
        .returning(TaskRun)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def cancel(session: AsyncSession, run_id: uuid.UUID) -> TaskRun | None:
    """Cancel a run that is not final; None when it was final already."""
    statement = (
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.state.not_in(FINAL_STATES))
        .values(state=RunState.CANCELLED, finished_at=func.now())
        .returning(TaskRun)
    )
    return (await session.execute(statement)).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class CancelledRun:
    """A run cancelled with the rest of its tenant's (`cancel_tenant_runs`)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    state: RunState
    attempts: int
    was_started: bool


async def _cancel_picked(
    connection: AsyncConnection, picked: Select[uuid.UUID, RunState]
) -> list[CancelledRun]:
    """Cancel the runs `picked` selects (id and state, not final, locked in id order); each
    with whether it was started (its worker stops it at its next cancel poll)."""
    chosen = picked.cte("picked")
    statement = (
        update(TaskRun)
        .where(TaskRun.id == chosen.c.id)
        .values(state=RunState.CANCELLED, finished_at=func.now(), updated_at=func.now())
        .returning(TaskRun.id, TaskRun.tenant_id, TaskRun.attempts, chosen.c.state)
    )
    return [
        CancelledRun(run_id, tenant, RunState.CANCELLED, attempts, was == RunState.STARTED)
        for run_id, tenant, attempts, was in (await connection.execute(statement)).all()
    ]


def _not_final(*where: Any) -> Select[uuid.UUID, RunState]:
    return (
        select(TaskRun.id, TaskRun.state)
        .where(TaskRun.state.not_in(FINAL_STATES), *where)
        .order_by(TaskRun.id)
        .with_for_update(of=TaskRun)
    )


async def cancel_tenant_runs(
    connection: AsyncConnection, tenant_id: uuid.UUID, rows: int
) -> list[CancelledRun]:
    """Cancel up to `rows` of the tenant's runs not yet final (a tenant's deletion), in id
    order."""
    return await _cancel_picked(connection, _not_final(TaskRun.tenant_id == tenant_id).limit(rows))


# A workflow step's compensation run's item index: apart from the step's own items.
COMPENSATION = -1


async def cancel_workflow_runs(
    connection: AsyncConnection, workflow_run_id: uuid.UUID, *, if_ended: bool = False
) -> list[CancelledRun]:
    """Cancel the runs of a workflow run's steps that are not final yet (it failed or was
    cancelled), in id order, but not its compensation runs. `if_ended`: only while the
    workflow run is not running (again: a replay may have started it over since)."""
    steps = cast(Table, WorkflowStep.__table__)
    in_workflow = (
        select(steps.c.id).where(steps.c.workflow_run_id == workflow_run_id).scalar_subquery()
    )
    picked = _not_final(
        TaskRun.workflow_step_id.in_(in_workflow),
        TaskRun.item_index.is_distinct_from(COMPENSATION),
    )
    if if_ended:
        ended = select(WorkflowRun.id).where(
            WorkflowRun.id == workflow_run_id, WorkflowRun.state != WorkflowState.RUNNING
        )
        picked = picked.where(ended.exists())
    return await _cancel_picked(connection, picked)


async def cancel_step_runs(
    connection: AsyncConnection, step_ids: Sequence[uuid.UUID]
) -> list[CancelledRun]:
    """Cancel the runs of these workflow steps that are not final (compensations too)."""
    if not step_ids:
        return []
    return await _cancel_picked(connection, _not_final(TaskRun.workflow_step_id.in_(step_ids)))


async def detach_step_runs(connection: AsyncConnection, step_ids: Sequence[uuid.UUID]) -> None:
    """The runs of these steps no longer belong to them (a replay runs the steps anew); they
    stay in the ledger as ordinary runs."""
    if step_ids:
        await connection.execute(
            update(TaskRun)
            .where(TaskRun.workflow_step_id.in_(list(step_ids)))
            .values(workflow_step_id=None, item_index=None)
        )


@dataclass(slots=False)
class NewRun:
    """A run about to be stored, as a plain object: what bulk submission builds by the
    thousand (an ORM TaskRun costs more to build than the database spends storing it). Its
    fields are `task_runs` columns; the rest take their defaults."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    task: str
    definition_id: uuid.UUID | None
    queue: str
    payload: dict[str, Any]
    state: RunState
    attempts: int
    eta: datetime | None
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    submitted_by: str | None
    replay_of: uuid.UUID | None
    admitted_at: datetime | None = None
    trace_parent: str | None = None
    workflow_step_id: uuid.UUID | None = None
    item_index: int | None = None


# A new run, as an ORM object (one submitted alone) or as a NewRun (one of a bulk request).
Stored = TaskRun | NewRun


def insert_values(run: Stored) -> dict[str, Any]:
    """The columns set on a transient TaskRun, for a Core INSERT (the rest take defaults)."""
    if isinstance(run, NewRun):
        return dict(run.__dict__)
    return {
        column.key: getattr(run, column.key)
        for column in _RUNS.columns
        if column.key in run.__dict__
    }


async def record(connection: AsyncConnection, run: TaskRun) -> None:
    """Store a new run (a transient TaskRun with its id set) in the caller's transaction.

    The object stays detached: the caller answers from it. IntegrityError as for any insert."""
    await connection.execute(insert(_RUNS), insert_values(run))


async def record_many(connection: AsyncConnection, runs: Sequence[Stored]) -> set[uuid.UUID]:
    """Store new runs (transient TaskRuns, ids set, all with the same columns set) in one
    statement (SQLAlchemy sends them as multi-row INSERTs) of the caller's transaction; the
    ids stored. A run whose idempotency key its
    tenant has used already is skipped (not an error): the caller answers with that run."""
    if not runs:
        return set()
    statement = (
        pg_insert(_RUNS)
        # Each row's own instant, in the order given: admission takes a tenant's waiting runs
        # oldest first, and the runs of one request wait in its order (now() is the same for
        # every row of a transaction).
        .values(created_at=func.clock_timestamp())
        .on_conflict_do_nothing(index_elements=[_RUNS.c.tenant_id, _RUNS.c.idempotency_key])
        .returning(_RUNS.c.id)
    )
    rows = await connection.execute(statement, [insert_values(run) for run in runs])
    return set(rows.scalars())


_DROPPED = in_id_order(
    _RUNS.c.id == any_(bindparam("run_ids", type_=ARRAY(Uuid))),
    _RUNS.c.state.in_((RunState.QUEUED, RunState.SCHEDULED)),
)
_DROP_UNPUBLISHED = delete(_RUNS).where(_RUNS.c.id == _DROPPED.c.id).returning(_RUNS.c.id)


async def drop_unpublished(connection: AsyncConnection, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Delete runs whose publish the broker did not confirm; the ids deleted. A run a worker
    has started meanwhile (its message did arrive) is kept: it was accepted after all."""
    if not run_ids:
        return set()
    rows = await connection.execute(_DROP_UNPUBLISHED, {"run_ids": run_ids})
    return set(rows.scalars())


class PublishedMarks:
    """`published_at` for runs just published, written in batches: the runs one process
    publishes within `delay` seconds share one autocommitted UPDATE (at most `batch` ids each).

    The mark only tells the outbox (beat sends again the runs still queued and unmarked after
    TASK_REPUBLISH_AFTER_SECONDS) that a run needs no second publish. A mark lost with the
    process (killed within `delay`) or with the database costs at most one duplicate message,
    which the worker's claim drops: a run never executes twice because of it. One per process
    and event loop; `close()` writes what is pending."""

    def __init__(self, engine: AsyncEngine, *, delay: float = 0.02, batch: int = 1000) -> None:
        self.engine = engine
        self.delay = delay
        self.batch = batch
        self._pending: list[uuid.UUID] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def add(self, run_id: uuid.UUID) -> None:
        self._pending.append(run_id)
        if self._writer is None or self._writer.done():
            # Of no one request: its writes and log lines carry none's request id or tenant.
            self._writer = asyncio.create_task(self._write_soon(), context=contextvars.Context())

    async def _write_soon(self) -> None:
        with contextlib.suppress(TimeoutError):  # the delay is up, or the process is stopping
            await asyncio.wait_for(self._closing.wait(), self.delay)
        await self.flush()

    async def flush(self) -> None:
        """Write every pending mark now; a failure is logged, never raised (see above)."""
        while self._pending:
            run_ids, self._pending = self._pending[: self.batch], self._pending[self.batch :]
            try:
                await once_more_if_dropped(self.engine, partial(write_published, run_ids))
            except Exception as exc:
                logger.warning(
                    "published_at not recorded; the outbox will publish these runs again",
                    extra={"runs": len(run_ids), "error": repr(exc)},
                )

    async def close(self) -> None:
        self._closing.set()
        if self._writer is not None:
            await self._writer
        await self.flush()


_BY_IDS = _RUNS.c.id == any_(bindparam("run_ids", type_=ARRAY(Uuid)))
_MARKED = in_id_order(_BY_IDS)
MARK_PUBLISHED = update(_RUNS).where(_RUNS.c.id == _MARKED.c.id).values(published_at=func.now())


async def write_published(run_ids: list[uuid.UUID], connection: AsyncConnection, _: bool) -> None:
    await connection.execute(MARK_PUBLISHED, {"run_ids": run_ids})  # twice is harmless


async def mark_published(session: AsyncSession, run_ids: list[uuid.UUID]) -> None:
    await session.execute(MARK_PUBLISHED, {"run_ids": run_ids})


async def unpublished(
    session: AsyncSession, older_than: datetime, limit: int = 100
) -> list[TaskRun]:
    """Accepted runs whose publish never completed (the gateway died in between), locked.
    A run waiting for its tenant's share (not admitted) is not one of them; a delayed run is
    published unadmitted (it is admitted when it comes due)."""
    statement = (
        select(TaskRun)
        .where(
            and_(
                # `ix_task_runs_outbox`'s predicate, word for word (a literal, not a parameter:
                # PostgreSQL proves a partial index from the statement's text).
                text(OUTBOX),
                # A run that waited for its tenant's share counts from its admission.
                func.coalesce(TaskRun.admitted_at, TaskRun.created_at) < older_than,
                TaskRun.state.in_((RunState.QUEUED, RunState.SCHEDULED)),
            )
        )
        .order_by(TaskRun.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(statement)).all())
