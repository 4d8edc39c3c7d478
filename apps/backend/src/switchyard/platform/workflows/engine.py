"""A workflow run's life: started with its root steps' runs, then advanced in the transaction
that records each step run's final outcome, so a step becomes due exactly when its last
parent's outcome is stored — a crash before that commit loses both, after it neither.

Every step run is an ordinary run of the ledger (`task_runs.workflow_step_id`, and its item's
index in a mapped step): the one submission entry stores and admits it (fair share counts it
like any run), the worker claims, runs and retries it by its task's policy. When one ends for
good, `advance`, in the same transaction:

1. counts it against its step (`items_left`, and `failed_items`), the step row locked;
2. a step whose runs have all ended succeeds, or fails if any did;
3. a step that succeeded (or failed with `on_failure: continue`) takes one off each child's
   `parents_left`; a child at none is due: its payload filled in from the workflow's input
   and its parents' results (a mapped parent's: its items' results in order), its runs
   stored and admitted here (published after the commit, `Advanced.publish`);
4. a step that failed otherwise fails the workflow: its waiting steps are skipped and its
   other runs cancelled after the commit (`Advanced.cancel`); `compensate` first starts the
   step's compensation run;
5. the workflow ends when none of its steps is left.

Locks, always in this order: the finished runs (the ledger's, in id order), their steps (in
id order), the steps they make due, the workflow runs (in id order). A deadlock or a lost
serialization race rolls the transaction back whole and it runs again (db.engine)."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from switchyard.db.engine import in_transaction
from switchyard.db.models import (
    FINAL_STATES,
    RunState,
    StepState,
    TaskRun,
    WorkflowDefinition,
    WorkflowRun,
    WorkflowState,
    WorkflowStep,
)
from switchyard.platform import events
from switchyard.platform.publisher import PublishedRun
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.runs import admission, changes, ledger
from switchyard.platform.workflows import graph
from switchyard.services import usage

if TYPE_CHECKING:
    from switchyard.services.container import Services
    from switchyard.settings import Settings

logger = logging.getLogger(__name__)

MAX_ERROR = 2000
_RUNS = cast(Table, TaskRun.__table__)
_STEPS = cast(Table, WorkflowStep.__table__)
_WORKFLOW_RUNS = cast(Table, WorkflowRun.__table__)
_DEFINITIONS = cast(Table, WorkflowDefinition.__table__)
# A compensation run's item index: apart from the step's own items, and never counted.
COMPENSATION = ledger.COMPENSATION


class StepFailedError(Exception):
    """A step that cannot start: its input cannot be filled in or does not fit its task."""


@dataclass
class Advanced:
    """What an advance leaves to do once it has committed."""

    publish: list[PublishedRun] = field(default_factory=list)
    stored: list[ledger.NewRun] = field(default_factory=list)  # counted as accepted runs
    cancel: list[uuid.UUID] = field(default_factory=list)  # workflow runs that failed
    finished: list[uuid.UUID] = field(default_factory=list)  # workflow runs that ended

    # Runs an advance cancelled itself (a replay's earlier runs): announced once committed.
    cancelled: list[ledger.CancelledRun] = field(default_factory=list)
    touched: set[uuid.UUID] = field(default_factory=set)  # workflow runs whose graph changed

    def add(self, other: Advanced) -> None:
        self.publish.extend(other.publish)
        self.stored.extend(other.stored)
        self.cancel.extend(other.cancel)
        self.finished.extend(other.finished)
        self.cancelled.extend(other.cancelled)
        self.touched |= other.touched


@dataclass(frozen=True)
class Context:
    """What building a step's runs needs: the tasks there are, the environment payloads are
    checked in, the bound on a map's items, and the fair-share policy runs are admitted by."""

    registry: TaskRegistry
    environment: str
    max_items: int
    policy: admission.Policy

    @classmethod
    def of(cls, registry: TaskRegistry, settings: Settings) -> Context:
        return cls(
            registry,
            settings.environment,
            settings.workflow_max_map_items,
            admission.Policy.of(settings),
        )


@dataclass
class _Workflow:
    id: uuid.UUID
    tenant_id: uuid.UUID
    state: WorkflowState
    input: Any
    steps: dict[str, dict[str, Any]]
    request_id: str | None

    def children(self, name: str) -> list[str]:
        return sorted(step for step, spec in self.steps.items() if name in spec["needs"])


def new_step_rows(
    run_id: uuid.UUID, tenant_id: uuid.UUID, steps: Sequence[dict[str, Any]]
) -> list[WorkflowStep]:
    return [
        WorkflowStep(
            id=uuid.uuid4(),
            workflow_run_id=run_id,
            tenant_id=tenant_id,
            name=step["name"],
            state=StepState.WAITING,
            parents_left=len(step["needs"]),
            failed_items=0,
        )
        for step in steps
    ]


async def start(
    connection: AsyncConnection,
    context: Context,
    definition: WorkflowDefinition,
    run: WorkflowRun,
) -> Advanced:
    """Store a new workflow run (`run`, its fields set), its steps, and its root steps' runs,
    in the caller's transaction."""
    steps = new_step_rows(run.id, run.tenant_id, definition.steps)
    await connection.execute(
        _WORKFLOW_RUNS.insert(),
        {
            "id": run.id,
            "tenant_id": run.tenant_id,
            "definition_id": definition.id,
            "state": WorkflowState.RUNNING,
            "input": run.input,
            "steps_left": len(steps),
            "idempotency_key": run.idempotency_key,
            "submitted_by": run.submitted_by,
            "request_id": run.request_id,
        },
    )
    await connection.execute(
        _STEPS.insert(),
        [
            {
                "id": step.id,
                "workflow_run_id": step.workflow_run_id,
                "tenant_id": step.tenant_id,
                "name": step.name,
                "state": step.state,
                "parents_left": step.parents_left,
                "failed_items": 0,
            }
            for step in steps
        ],
    )
    workflow = _Workflow(
        run.id,
        run.tenant_id,
        WorkflowState.RUNNING,
        run.input,
        {step["name"]: step for step in definition.steps},
        run.request_id,
    )
    advanced = Advanced(touched={run.id})
    due = [(step.id, step.name) for step in steps if step.parents_left == 0]
    await _make_due(connection, context, workflow, due, advanced)
    return advanced


async def advance(
    connection: AsyncConnection, context: Context, changes: Sequence[ledger.RunChange]
) -> Advanced:
    """Count the step runs `changes` recorded final against their steps and go on from there
    (see the module's description). Runs that are not steps' are ignored."""
    advanced = Advanced()
    ended: dict[uuid.UUID, list[ledger.RunChange]] = defaultdict(list)
    for change in changes:
        if change.workflow_step_id is not None and change.state.final:
            ended[change.workflow_step_id].append(change)
    for step_id in sorted(ended):
        counted = [c for c in ended[step_id] if c.item_index != COMPENSATION]
        if counted:
            await _count(connection, context, step_id, counted, advanced)
    return advanced


async def _count(
    connection: AsyncConnection,
    context: Context,
    step_id: uuid.UUID,
    changes: list[ledger.RunChange],
    advanced: Advanced,
) -> None:
    failed = sum(1 for change in changes if change.state != RunState.SUCCEEDED)
    steps = _STEPS
    row = (
        await connection.execute(
            update(steps)
            .where(steps.c.id == step_id, steps.c.state == StepState.RUNNING)
            .values(
                items_left=steps.c.items_left - len(changes),
                failed_items=steps.c.failed_items + failed,
            )
            .returning(
                steps.c.workflow_run_id, steps.c.name, steps.c.items_left, steps.c.failed_items
            )
        )
    ).one_or_none()
    if row is not None:
        advanced.touched.add(row.workflow_run_id)
    if row is None or row.items_left > 0:
        return  # not running (its workflow ended), or runs of it are still going
    workflow = await _workflow(connection, row.workflow_run_id)
    if workflow is None:
        return
    error = None
    if row.failed_items:
        error = await _first_error(connection, step_id, changes, row.failed_items)
    await _conclude(connection, context, workflow, step_id, row.name, error, advanced)


async def _first_error(
    connection: AsyncConnection,
    step_id: uuid.UUID,
    changes: list[ledger.RunChange],
    failed: int,
) -> str:
    """What a failed step says: a failed run's error (one of these changes', else the first
    that failed before them), and how many failed when more than one did."""
    error = next(
        (c.error_message for c in changes if c.state != RunState.SUCCEEDED and c.error_message),
        None,
    )
    if error is None:
        error = await connection.scalar(
            select(_RUNS.c.error_message)
            .where(
                _RUNS.c.workflow_step_id == step_id,
                _RUNS.c.state.in_(FINAL_STATES - {RunState.SUCCEEDED}),
                _RUNS.c.item_index.is_distinct_from(COMPENSATION),
                _RUNS.c.error_message.is_not(None),
            )
            .order_by(_RUNS.c.finished_at)
            .limit(1)
        )
    if error is None:
        error = "its run was cancelled" if failed == 1 else "its runs were cancelled"
    return error if failed == 1 else f"{failed} of its runs failed; the first: {error}"


async def _workflow(connection: AsyncConnection, run_id: uuid.UUID) -> _Workflow | None:
    runs = _WORKFLOW_RUNS
    definitions = _DEFINITIONS
    row = (
        await connection.execute(
            select(
                runs.c.id,
                runs.c.tenant_id,
                runs.c.state,
                runs.c.input,
                runs.c.request_id,
                definitions.c.steps,
            )
            .join(definitions, definitions.c.id == runs.c.definition_id)
            .where(runs.c.id == run_id)
        )
    ).one_or_none()
    if row is None:
        return None
    return _Workflow(
        row.id,
        row.tenant_id,
        WorkflowState(row.state),
        row.input,
        {step["name"]: step for step in row.steps},
        row.request_id,
    )


async def _conclude(
    connection: AsyncConnection,
    context: Context,
    workflow: _Workflow,
    step_id: uuid.UUID,
    name: str,
    error: str | None,
    advanced: Advanced,
) -> None:
    """A step has ended: `error` None for success. Its children, or its workflow's failure."""
    steps = _STEPS
    await connection.execute(
        update(steps)
        .where(steps.c.id == step_id)
        .values(
            state=StepState.FAILED if error else StepState.SUCCEEDED,
            error_message=error[:MAX_ERROR] if error else None,
            finished_at=func.now(),
        )
    )
    spec = workflow.steps[name]
    if error is not None and spec["on_failure"] != "continue":
        if spec["on_failure"] == "compensate" and workflow.state == WorkflowState.RUNNING:
            await _compensate(connection, context, workflow, step_id, spec, advanced)
        await _steps_ended(connection, workflow, 1, f"step {name!r} failed: {error}", advanced)
        return
    await _steps_ended(connection, workflow, 1, None, advanced)
    if workflow.state != WorkflowState.RUNNING:
        return
    children = workflow.children(name)
    if not children:
        return
    rows = await connection.execute(
        update(steps)
        .where(
            steps.c.workflow_run_id == workflow.id,
            steps.c.name.in_(children),
            steps.c.state == StepState.WAITING,
        )
        .values(parents_left=steps.c.parents_left - 1)
        .returning(steps.c.id, steps.c.name, steps.c.parents_left)
    )
    due = sorted((row.id, row.name) for row in rows if row.parents_left == 0)
    await _make_due(connection, context, workflow, due, advanced)


async def _steps_ended(
    connection: AsyncConnection,
    workflow: _Workflow,
    count: int,
    failure: str | None,
    advanced: Advanced,
) -> None:
    """`count` steps are final; the workflow fails with `failure`, or ends once none is left."""
    runs = _WORKFLOW_RUNS
    if failure is not None and workflow.state == WorkflowState.RUNNING:
        # The rest ends with it: waiting steps skipped, running ones cancelled (their runs
        # are cancelled after the commit; an outcome of theirs still to come counts nothing).
        await _end_steps(connection, workflow.id)
        await connection.execute(
            update(runs)
            .where(runs.c.id == workflow.id)
            .values(
                state=WorkflowState.FAILED,
                error_message=failure[:MAX_ERROR],
                steps_left=0,
                finished_at=func.now(),
            )
        )
        workflow.state = WorkflowState.FAILED
        advanced.cancel.append(workflow.id)
        advanced.finished.append(workflow.id)
        return
    left = await connection.scalar(
        update(runs)
        .where(runs.c.id == workflow.id)
        .values(steps_left=runs.c.steps_left - count)
        .returning(runs.c.steps_left)
    )
    if left == 0 and workflow.state == WorkflowState.RUNNING:
        await connection.execute(
            update(runs)
            .where(runs.c.id == workflow.id)
            .values(state=WorkflowState.SUCCEEDED, finished_at=func.now())
        )
        workflow.state = WorkflowState.SUCCEEDED
        advanced.finished.append(workflow.id)


async def _end_steps(connection: AsyncConnection, workflow_run_id: uuid.UUID) -> None:
    """A workflow run that fails or is cancelled: its waiting steps skipped, its running
    ones cancelled, locked in id order."""
    steps = _STEPS
    picked = (
        select(steps.c.id)
        .where(
            steps.c.workflow_run_id == workflow_run_id,
            steps.c.state.in_((StepState.WAITING, StepState.RUNNING)),
        )
        .order_by(steps.c.id)
        .with_for_update()
        .cte("picked")
    )
    await connection.execute(
        update(steps)
        .where(steps.c.id == picked.c.id)
        .values(
            state=case(
                (steps.c.state == StepState.WAITING, StepState.SKIPPED),
                else_=StepState.CANCELLED,
            ),
            finished_at=func.now(),
        )
    )


async def _make_due(
    connection: AsyncConnection,
    context: Context,
    workflow: _Workflow,
    due: list[tuple[uuid.UUID, str]],
    advanced: Advanced,
) -> None:
    """Start the steps `due` (their parents all ended): their runs stored and admitted, or,
    for one that cannot start (or maps over no item), its end at once."""
    steps = _STEPS
    pending = list(due)
    while pending and workflow.state == WorkflowState.RUNNING:
        step_id, name = pending.pop(0)
        spec = workflow.steps[name]
        try:
            runs = await _runs_of(connection, context, workflow, step_id, spec)
        except StepFailedError as exc:
            await connection.execute(
                update(steps)
                .where(steps.c.id == step_id)
                .values(state=StepState.RUNNING, items=0, items_left=0, started_at=func.now())
            )
            await _conclude(connection, context, workflow, step_id, name, str(exc), advanced)
            continue
        await connection.execute(
            update(steps)
            .where(steps.c.id == step_id)
            .values(
                state=StepState.RUNNING,
                items=len(runs),
                items_left=len(runs),
                started_at=func.now(),
            )
        )
        if not runs:  # a map over no item: done, with no result but []
            await _conclude(connection, context, workflow, step_id, name, None, advanced)
            continue
        await _store(connection, context, runs, advanced)


async def _store(
    connection: AsyncConnection,
    context: Context,
    runs: list[ledger.NewRun],
    advanced: Advanced,
) -> None:
    now = datetime.now(UTC)
    for run in runs:
        run.admitted_at = None if context.policy.enabled else now
    _, admitted = await admission.store(connection, runs, context.policy)
    advanced.stored.extend(runs)
    # With fair share off the runs come admitted; on, those its share had room for.
    advanced.publish.extend(admitted if context.policy.enabled else runs)


async def _runs_of(
    connection: AsyncConnection,
    context: Context,
    workflow: _Workflow,
    step_id: uuid.UUID,
    spec: dict[str, Any],
) -> list[ledger.NewRun]:
    """The runs of a step that is due: one, or one per item of its map."""
    task = context.registry.get(spec["task"])
    if task is None:
        raise StepFailedError(f"no task named {spec['task']!r} is registered any more")
    results = await parents_results(connection, workflow, spec["needs"])
    try:
        if spec.get("map") is None:
            payloads = [graph.fill(spec["payload"], workflow.input, results)]
            indexes: list[int | None] = [None]
        else:
            items = graph.fill(spec["map"], workflow.input, results)
            if not isinstance(items, list):
                raise StepFailedError(f"its map is {type(items).__name__}, not a list")
            if len(items) > context.max_items:
                raise StepFailedError(
                    f"its map has {len(items)} items, more than WORKFLOW_MAX_MAP_ITEMS "
                    f"({context.max_items})"
                )
            payloads = [
                graph.fill(spec["payload"], workflow.input, results, item) for item in items
            ]
            indexes = list(range(len(items)))
    except graph.MissingValueError as exc:
        raise StepFailedError(str(exc)) from None
    for payload in payloads:
        try:
            task.validate(payload, context.environment)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise StepFailedError(
                f"its input does not fit {task.name}: {where}: {first['msg']}"
            ) from None
    return [
        _new_run(workflow, step_id, task.name, task.queue, payload, index)
        for payload, index in zip(payloads, indexes, strict=True)
    ]


def _new_run(
    workflow: _Workflow,
    step_id: uuid.UUID,
    task: str,
    queue: str,
    payload: Any,
    index: int | None,
) -> ledger.NewRun:
    return ledger.NewRun(
        id=uuid.uuid4(),
        tenant_id=workflow.tenant_id,
        task=task,
        definition_id=None,
        queue=queue,
        payload=payload,
        state=RunState.QUEUED,
        attempts=0,
        eta=None,
        idempotency_key=None,
        request_hash=None,
        request_id=workflow.request_id,
        submitted_by=f"workflow:{workflow.id}",
        replay_of=None,
        workflow_step_id=step_id,
        item_index=index,
    )


async def parents_results(
    connection: AsyncConnection, workflow: _Workflow, parents: Sequence[str]
) -> dict[str, Any]:
    """Each parent's result: its run's, or, for a mapped parent, its items' in order (null
    for one that failed)."""
    if not parents:
        return {}
    runs = _RUNS
    steps = _STEPS
    rows = await connection.execute(
        select(steps.c.name, runs.c.item_index, runs.c.result)
        .join(runs, runs.c.workflow_step_id == steps.c.id)
        .where(
            steps.c.workflow_run_id == workflow.id,
            steps.c.name.in_(list(parents)),
            runs.c.item_index.is_distinct_from(COMPENSATION),
        )
        .order_by(steps.c.name, runs.c.item_index)
    )
    results: dict[str, Any] = {
        name: [] if workflow.steps[name].get("map") is not None else None for name in parents
    }
    for row in rows:
        if workflow.steps[row.name].get("map") is not None:
            results[row.name].append(row.result)
        else:
            results[row.name] = row.result
    return results


async def _compensate(
    connection: AsyncConnection,
    context: Context,
    workflow: _Workflow,
    step_id: uuid.UUID,
    spec: dict[str, Any],
    advanced: Advanced,
) -> None:
    compensation = spec["compensation"]
    task = context.registry.get(compensation["task"])
    if task is None:
        logger.error("compensation not started: its task is not registered any more")
        return
    results = await parents_results(connection, workflow, spec["needs"])
    try:
        payload = graph.fill(compensation["payload"], workflow.input, results)
        task.validate(payload, context.environment)
    except (graph.MissingValueError, ValidationError) as exc:
        logger.error("compensation not started: its input", extra={"error": str(exc)})
        return
    run = _new_run(workflow, step_id, task.name, task.queue, payload, COMPENSATION)
    await _store(connection, context, [run], advanced)


async def cancel_rest(
    connection: AsyncConnection, workflow_run_id: uuid.UUID, *, if_ended: bool = False
) -> list[ledger.CancelledRun]:
    """Cancel the runs of a workflow run that are not final yet (it failed or was cancelled);
    a started one stops at its worker's next cancel poll (ledger.cancel_workflow_runs)."""
    return await ledger.cancel_workflow_runs(connection, workflow_run_id, if_ended=if_ended)


class Steps:
    """The worker's hook into the ledger's outcome writes (ledger.GroupWrites): a step run's
    outcome advances its workflow in the same transaction; then the runs that made due are
    published, and the rest of a failed workflow is cancelled. One per worker process."""

    def __init__(self, services: Services, registry: TaskRegistry) -> None:
        self.services = services
        self.context = Context.of(registry, services.settings)

    async def advance(
        self, connection: AsyncConnection, changes: list[ledger.RunChange]
    ) -> Advanced:
        return await advance(connection, self.context, changes)

    async def after(self, advanced: Advanced) -> None:
        await published(self.services, advanced)

    async def ended(self, session: AsyncSession, runs: Sequence[TaskRun]) -> Advanced:
        """Runs ended outside a worker's outcome writes (cancelled over REST, dead-lettered),
        in `session`'s transaction: their workflows advanced in it. `after` the result once
        that has committed."""
        ended = [ledger.RunChange.of(run) for run in runs if run.workflow_step_id is not None]
        if not ended:
            return Advanced()
        return await advance(await session.connection(), self.context, ended)


async def published(services: Services, advanced: Advanced) -> None:
    """What an advance (or a start) leaves to do once committed: publish the runs it admitted
    (a refused publish is left to the outbox), and cancel the rest of each workflow that
    failed. Best effort: the ledger is the truth. The runs stored count as the tenant's
    accepted runs (its runs quotas), as a submission's do."""
    for new in advanced.stored:
        services.usage.count(usage.Use(new.tenant_id, usage.Meter.RUNS_ACCEPTED, new.task, 1))
    for cancelled in advanced.cancelled:
        await changes.changed(services, cancelled)
    namespace = services.settings.cache_namespace
    for workflow_run_id in sorted(advanced.touched):
        events.announce_workflow(services.announcer, namespace, workflow_run_id)
    dispatcher = services.admission
    if advanced.publish and dispatcher is not None:
        await dispatcher.publish(advanced.publish)
    for workflow_run_id in advanced.cancel:

        async def cancel(
            connection: AsyncConnection, run_id: uuid.UUID = workflow_run_id
        ) -> list[ledger.CancelledRun]:
            return await cancel_rest(connection, run_id, if_ended=True)

        for run in await in_transaction(services.database_engine, cancel):
            await changes.changed(services, run)


class NotRunningError(Exception):
    """The workflow run has ended already: nothing to cancel."""


async def cancel(
    connection: AsyncConnection, tenant_id: uuid.UUID, workflow_run_id: uuid.UUID
) -> list[ledger.CancelledRun] | None:
    """Cancel a running workflow run in the caller's transaction: its runs not final yet
    (a started one stops at its worker's next cancel poll), its steps not ended, and the run
    itself. None when there is no such run of the tenant; NotRunningError when it has ended.

    Locks in the platform's order: the runs (in id order), the steps, the workflow run. The
    runs are cancelled again last: a step a worker made due while this waited for its locks
    has its runs cancelled too."""
    found = await connection.scalar(
        select(_WORKFLOW_RUNS.c.state).where(
            _WORKFLOW_RUNS.c.id == workflow_run_id, _WORKFLOW_RUNS.c.tenant_id == tenant_id
        )
    )
    if found is None:
        return None
    if WorkflowState(found) != WorkflowState.RUNNING:
        raise NotRunningError
    cancelled = await cancel_rest(connection, workflow_run_id)
    await _end_steps(connection, workflow_run_id)
    ended = await connection.scalar(
        update(_WORKFLOW_RUNS)
        .where(
            _WORKFLOW_RUNS.c.id == workflow_run_id,
            _WORKFLOW_RUNS.c.state == WorkflowState.RUNNING,
        )
        .values(
            state=WorkflowState.CANCELLED,
            steps_left=0,
            error_message="cancelled",
            finished_at=func.now(),
        )
        .returning(_WORKFLOW_RUNS.c.id)
    )
    if ended is None:  # it ended while this waited for its locks
        raise NotRunningError
    return cancelled + await cancel_rest(connection, workflow_run_id)


class NotReplayableError(Exception):
    """The workflow run has not failed, or the step is not one that failed."""


async def replay(
    connection: AsyncConnection,
    context: Context,
    tenant_id: uuid.UUID,
    workflow_run_id: uuid.UUID,
    step_name: str,
) -> Advanced | None:
    """Start a failed workflow run again from its failed step `step_name`, in the caller's
    transaction: every step that did not end well (failed and not `continue`, cancelled,
    skipped) is waiting again, with its parents left counted anew; those whose parents are
    all done are due at once. Their earlier runs are cancelled if not final and detached from
    the step (they stay in the ledger, `submitted_by` naming the workflow run). None when no
    such workflow run of the tenant; KeyError when it has no such step; NotReplayableError
    when it has not failed or the step did not fail.

    Locks in the platform's order: the earlier runs (in id order), the steps (in id order),
    the workflow run."""
    workflow = await _workflow(connection, workflow_run_id)
    if workflow is None or workflow.tenant_id != tenant_id:
        return None
    if step_name not in workflow.steps:
        raise KeyError(step_name)
    if workflow.state != WorkflowState.FAILED:
        raise NotReplayableError
    steps = _STEPS
    of_workflow = (
        select(steps.c.id, steps.c.name, steps.c.state)
        .where(steps.c.workflow_run_id == workflow_run_id)
        .order_by(steps.c.id)
    )
    rows = (await connection.execute(of_workflow)).all()
    state = {row.name: StepState(row.state) for row in rows}
    if state[step_name] != StepState.FAILED:
        raise NotReplayableError

    def done(name: str) -> bool:
        return state[name] == StepState.SUCCEEDED or (
            state[name] == StepState.FAILED and workflow.steps[name]["on_failure"] == "continue"
        )

    again = {row.id: row.name for row in rows if not done(row.name)}
    # The runs first, as every ledger writer locks them (an earlier run of these steps may
    # be ending on a worker right now); then the steps, which a failed run keeps as they are.
    cancelled = await ledger.cancel_step_runs(connection, list(again))
    await ledger.detach_step_runs(connection, list(again))
    locked = (await connection.execute(of_workflow.with_for_update())).all()
    if {row.name: StepState(row.state) for row in locked} != state:
        raise NotReplayableError  # replayed by another request meanwhile
    for step_id, name in sorted(again.items()):
        await connection.execute(
            update(steps)
            .where(steps.c.id == step_id)
            .values(
                state=StepState.WAITING,
                parents_left=sum(1 for parent in workflow.steps[name]["needs"] if not done(parent)),
                items=None,
                items_left=None,
                failed_items=0,
                error_message=None,
                started_at=None,
                finished_at=None,
            )
        )
    ended = await connection.scalar(
        update(_WORKFLOW_RUNS)
        .where(
            _WORKFLOW_RUNS.c.id == workflow_run_id, _WORKFLOW_RUNS.c.state == WorkflowState.FAILED
        )
        .values(
            state=WorkflowState.RUNNING,
            steps_left=len(again),
            error_message=None,
            finished_at=None,
        )
        .returning(_WORKFLOW_RUNS.c.id)
    )
    if ended is None:  # replayed by another request meanwhile
        raise NotReplayableError
    workflow.state = WorkflowState.RUNNING
    advanced = Advanced(cancelled=cancelled, touched={workflow_run_id})
    due = sorted(
        (step_id, name)
        for step_id, name in again.items()
        if not any(not done(parent) for parent in workflow.steps[name]["needs"])
    )
    await _make_due(connection, context, workflow, due, advanced)
    return advanced
