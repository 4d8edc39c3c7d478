"""Rules of the tasks domain: what may be run, registered, cancelled and replayed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth.principal import Principal
from switchyard.db.models import (
    UNPLANNED,
    DeadLetter,
    RunState,
    TaskDefinition,
    TaskRun,
    Tenant,
)
from switchyard.db.session import after_commit, end_reads
from switchyard.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    field_errors,
)
from switchyard.logging import request_id_var
from switchyard.platform import audit, metrics, schedules
from switchyard.platform.metrics import RUNS_SUBMITTED
from switchyard.platform.registry import TaskRegistry, TaskSpec
from switchyard.platform.runs import admission, changes, ledger
from switchyard.platform.submission import OnRefusal, RunsRefusedError, Submissions
from switchyard.platform.topology import WORK_QUEUES
from switchyard.services import quotas
from switchyard.services.cache import Cache
from switchyard.services.container import Services
from switchyard.services.quotas import Limits, Quotas
from switchyard.settings import Settings
from switchyard.tasks import repository
from switchyard.tasks.schemas import (
    DefinitionIn,
    DefinitionPatch,
    RegisteredTask,
    RetryPolicyOut,
    RunOut,
    RunRequest,
    ShareOut,
    TenantLoad,
)

logger = logging.getLogger(__name__)

R = TypeVar("R")

RUN_VIEW_CACHE_SECONDS = 300
RUN_VIEW_CACHE_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Submitter:
    tenant_id: uuid.UUID
    request_id: str | None
    submitted_by: str | None
    # The caller's scopes when the run comes over REST (POST /tasks/run): the task must be
    # public and the scope its. None: the platform submits (an upload's ingestion run).
    scopes: frozenset[str] | None = None
    # A replay may re-run an internal task: its payload is the platform's own, kept with the
    # dead letter, and replaying needs tasks:admin.
    internal_ok: bool = False
    # The tenant's plan limits (the principal's), checked before the runs are stored; and
    # who warns of a soft limit passed. None: no quota.
    limits: Limits | None = None
    quotas: Quotas | None = None
    # Whether an LLM is configured: without one, no run can spend tokens.
    llm: bool = True

    @classmethod
    def of(
        cls,
        principal: Principal,
        services: Services,
        *,
        scopes: frozenset[str] | None = None,
        internal_ok: bool = False,
    ) -> Submitter:
        """A request's caller, with its tenant's plan limits."""
        return cls(
            principal.tenant_id,
            request_id_var.get(),
            principal.actor,
            scopes=scopes,
            internal_ok=internal_ok,
            limits=principal.limits,
            quotas=services.quotas,
            llm=services.llm is not None,
        )


async def check_quotas(
    session: AsyncSession, submitter: Submitter, specs: Sequence[TaskSpec[Any]]
) -> None:
    """429 (problem naming the quota) when runs of `specs` would pass the tenant's runs
    quotas, or its run seconds or (for a task that spends them) LLM tokens are spent."""
    if submitter.limits is None or not specs:
        return
    count = len(specs)
    demands = {"runs_per_month": count, "runs_per_day": count, "run_seconds_per_month": 1}
    if submitter.llm and any(spec.spends_llm_tokens for spec in specs):
        demands |= dict.fromkeys(quotas.LLM_QUOTAS, 1)
    figures = await quotas.check(
        await session.connection(), submitter.tenant_id, submitter.limits, demands
    )
    if submitter.quotas is not None:
        await submitter.quotas.warn(submitter.tenant_id, submitter.limits, figures)


def check_access(spec: TaskSpec[Any], submitter: Submitter) -> None:
    """Internal tasks are unknown over REST (404); a missing scope is 403 naming it."""
    if submitter.scopes is None:
        return
    if spec.access == "internal":
        if submitter.internal_ok:
            return
        raise NotFoundError(f"No task named {spec.name!r} is registered.")
    if spec.scope not in submitter.scopes:
        raise ForbiddenError(f"Running {spec.name} needs the scope {spec.scope!r}.")


def replay_key(letter_id: uuid.UUID) -> str:
    """The idempotency key of a dead letter's replay: one run per letter, however often."""
    return f"replay:{letter_id}"


def registered(registry: TaskRegistry, scopes: frozenset[str]) -> list[RegisteredTask]:
    """The tasks a caller with `scopes` may run over REST."""
    return [
        RegisteredTask(
            name=spec.name,
            description=spec.description,
            scope=spec.scope,
            queue=spec.queue,
            retry=RetryPolicyOut(
                max_retries=spec.retry.max_retries,
                backoff_seconds=spec.retry.backoff_seconds,
                backoff_max_seconds=spec.retry.backoff_max_seconds,
                jitter=spec.retry.jitter,
                retry_on=[error.__name__ for error in spec.retry.retry_on],
            ),
            soft_time_limit=spec.soft_time_limit,
            time_limit=spec.time_limit,
            input_schema=spec.input_schema(),
        )
        for spec in registry.all()
        if spec.runnable_with(scopes)
    ]


def _spec(
    registry: TaskRegistry, name: str, field: str, scopes: frozenset[str] | None
) -> TaskSpec[Any]:
    """A task a definition names: unknown (or internal, for a caller) is 422 on `field`."""
    spec = registry.get(name)
    if spec is None or (scopes is not None and spec.access == "internal"):
        raise InvalidInputError.on(
            field,
            f"No task named {name!r} is registered.",
            message="unknown task",
            type="unknown_task",
        )
    if scopes is not None and spec.scope not in scopes:
        raise ForbiddenError(f"Running {spec.name} needs the scope {spec.scope!r}.")
    return spec


def validate_payload(
    spec: TaskSpec[Any], payload: dict[str, Any], field: str, environment: str
) -> None:
    """422 naming each failing payload field, before anything is stored or published."""
    try:
        spec.validate(payload, environment)
    except ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False), field)
        raise InvalidInputError(
            f"The payload does not match {spec.name}'s input.", errors
        ) from None


def _queue(queue: str | None, field: str) -> str | None:
    if queue is not None and queue not in WORK_QUEUES:
        raise InvalidInputError.on(
            field,
            f"Unknown queue {queue!r}.",
            message=f"one of {', '.join(WORK_QUEUES)}",
            type="enum",
        )
    return queue


def _eta(request: RunRequest, max_countdown: int, at: str = "body") -> datetime | None:
    now = datetime.now(UTC)
    if request.countdown is not None:
        field = f"{at}.countdown"
        too_far = request.countdown > max_countdown  # before any date arithmetic can overflow
        eta = None if too_far else now + timedelta(seconds=request.countdown)
    elif request.eta is not None:
        field, eta = f"{at}.eta", request.eta.astimezone(UTC)
        too_far = eta - now > timedelta(seconds=max_countdown)
    else:
        return None
    if too_far or eta is None:
        raise InvalidInputError.on(
            field,
            f"Runs may be delayed by at most {max_countdown} seconds.",
            message=f"at most {max_countdown} s ahead",
            type="too_far",
        )
    return eta if eta > now else None


def _request_hash(request: RunRequest) -> str:
    """The same for a run asked for alone and as an item of a bulk request (whose own
    idempotency key is not part of what it asks for)."""
    canonical = json.dumps(
        request.model_dump(mode="json", exclude={"idempotency_key"}),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _new_run(
    make: Callable[..., R],
    spec: TaskSpec[Any],
    definition: TaskDefinition | None,
    request: RunRequest,
    submitter: Submitter,
    *,
    at: str,
    idempotency_key: str | None,
    max_countdown: int,
    environment: str,
    replay_of: uuid.UUID | None = None,
) -> R:
    """The run `request` asks for, checked (422 naming each field under `at`), not stored:
    built by `make` (TaskRun, or ledger.NewRun by the thousand)."""
    check_access(spec, submitter)
    payload = (
        request.payload
        if request.payload is not None
        else (definition.payload if definition else {})
    )
    validate_payload(spec, payload, f"{at}.payload", environment)
    queue = _queue(request.queue, f"{at}.queue") or (definition.queue if definition else None)
    eta = _eta(request, max_countdown, at)
    return make(
        id=uuid.uuid4(),
        tenant_id=submitter.tenant_id,
        task=spec.name,
        definition_id=definition.id if definition else None,
        queue=queue or spec.queue,
        payload=payload,
        state=RunState.SCHEDULED if eta else RunState.QUEUED,
        attempts=0,
        eta=eta,
        idempotency_key=idempotency_key,
        # Compared only when a later request names the same key: none without a key.
        request_hash=_request_hash(request) if idempotency_key is not None else None,
        request_id=submitter.request_id,
        submitted_by=submitter.submitted_by,
        replay_of=replay_of,
    )


async def submit(
    session: AsyncSession,
    submissions: Submissions,
    registry: TaskRegistry,
    request: RunRequest,
    submitter: Submitter,
    *,
    idempotency_key: str | None,
    max_countdown: int,
    settings: Settings,
    replay_of: uuid.UUID | None = None,
    alone: bool = False,
) -> tuple[TaskRun, bool]:
    """Check the run `request` asks for and submit it (platform.submission): (run, created).
    A run is in the ledger before the broker sees it; if the broker refuses, the run is
    removed again and the caller gets 503 (`OnRefusal.REFUSE`), with whatever else the unit
    of work undoes on failure; if the gateway dies between the two, beat's outbox publishes
    it. With fair share on (FAIR_SHARE) a run is published only once it is admitted to its
    tenant's share (platform.runs.admission); until then it waits, `queued`.

    The run is stored in the request's unit of work (`session`) and published once that
    commits, unless it is `alone` (POST /tasks/run, where the run is all the unit of work
    holds): then it is stored and published with the runs other requests of the process
    submit at the same moment, in a transaction of its own, and this returns once it is
    committed and confirmed."""
    tenant_id = submitter.tenant_id
    spec, definition = await _target(session, registry, request, tenant_id)
    run = _new_run(
        TaskRun,
        spec,
        definition,
        request,
        submitter,
        at="body",
        idempotency_key=idempotency_key,
        max_countdown=max_countdown,
        environment=settings.environment,
        replay_of=replay_of,
    )
    runs = repository.RunRepository(session, tenant_id)
    if idempotency_key is not None:
        existing = await runs.by_idempotency_key(idempotency_key)
        if existing is not None:
            return _duplicate(existing, run.request_hash), False
    await check_quotas(session, submitter, [spec])
    if alone:  # the group commit takes a connection of its own: this one goes back first
        await end_reads(session)
    accepted = await submissions.submit(
        [run], on_refusal=OnRefusal.REFUSE, within=None if alone else session
    )
    outcome = accepted.outcome(run.id)
    if outcome == "taken":  # its idempotency key was taken by a request meanwhile
        assert run.idempotency_key is not None
        existing = await runs.by_idempotency_key(run.idempotency_key)
        if existing is None:  # ...and that run is gone again (its broker refused it)
            raise _broker_refused(run)
        return _duplicate(existing, run.request_hash), False
    if outcome == "refused":
        raise _broker_refused(run)
    waiting = run.eta is None and run.admitted_at is None
    RUNS_SUBMITTED.labels(task=run.task, outcome="waiting" if waiting else "accepted").inc()
    return run, True


async def _target(
    session: AsyncSession, registry: TaskRegistry, request: RunRequest, tenant_id: uuid.UUID
) -> tuple[TaskSpec[Any], TaskDefinition | None]:
    """The task a request names, or its definition's: an unknown one is 404."""
    if request.definition is not None:
        definition = await repository.DefinitionRepository(session, tenant_id).by_name_or_404(
            request.definition
        )
        return _spec(registry, definition.task, "body.definition", None), definition
    assert request.task is not None
    spec = registry.get(request.task)
    if spec is None:
        raise NotFoundError(f"No task named {request.task!r} is registered.")
    return spec, None


def _broker_refused(run: TaskRun) -> RunsRefusedError:
    RUNS_SUBMITTED.labels(task=run.task, outcome="broker_unavailable").inc()
    return RunsRefusedError([run.id])


def _duplicate(existing: TaskRun, request_hash: str | None) -> TaskRun:
    """The run an Idempotency-Key already names, if the request is the same."""
    if existing.request_hash != request_hash:
        raise ConflictError("This Idempotency-Key was used with a different request.")
    RUNS_SUBMITTED.labels(task=existing.task, outcome="duplicate").inc()
    return existing


async def get_run(session: AsyncSession, tenant_id: uuid.UUID, run_id: uuid.UUID) -> TaskRun:
    return await repository.RunRepository(session, tenant_id).get_or_404(run_id)


async def run_view(
    session: AsyncSession, cache: Cache, tenant_id: uuid.UUID, run_id: uuid.UUID
) -> RunOut:
    """A run as the API shows it. A final run never changes again (every ledger update skips
    final runs), so its view is cached: pollers of finished runs spare the database."""
    key = f"runs:{tenant_id}:{run_id}"
    cached = await cache.get(key)
    if cached is not None:
        return RunOut.model_validate_json(cached)
    view = RunOut.of(await get_run(session, tenant_id, run_id))
    if view.state.final:
        body = view.model_dump_json()
        if len(body) <= RUN_VIEW_CACHE_MAX_BYTES:
            await cache.set(key, body, ttl_seconds=RUN_VIEW_CACHE_SECONDS)
    return view


async def cancel(
    session: AsyncSession, services: Services, tenant_id: uuid.UUID, run_id: uuid.UUID
) -> TaskRun:
    """Cancel a run that is not final. Once that is committed, its followers hear of it and
    its slot of the tenant's share (if it held one) goes to the next run."""
    run = await get_run(session, tenant_id, run_id)
    cancelled = await ledger.cancel(session, run_id)
    if cancelled is None:
        raise ConflictError(f"Run {run_id} is already {run.state.value}.")
    after_commit(session, lambda: changes.changed(services, cancelled))
    steps = services.workflow_steps  # a workflow's step run: its step counts it as failed
    if steps is not None and cancelled.workflow_step_id is not None:
        advanced = await steps.ended(session, [cancelled])
        after_commit(session, lambda: steps.after(advanced))
    return cancelled


@dataclass(frozen=True)
class Editor:
    """Who changes a definition: in which tenant, the scopes it must hold for the task, the
    environment the payload is checked in, and the tasks there are."""

    tenant_id: uuid.UUID
    scopes: frozenset[str]
    environment: str
    registry: TaskRegistry
    actor: str = audit.ANONYMOUS


def _definition_fields(
    task: str, payload: dict[str, Any], queue: str | None, editor: Editor
) -> None:
    spec = _spec(editor.registry, task, "body.task", editor.scopes)
    validate_payload(spec, payload, "body.payload", editor.environment)
    _queue(queue, "body.queue")


async def create_definition(
    session: AsyncSession, body: DefinitionIn, editor: Editor
) -> TaskDefinition:
    tenant_id = editor.tenant_id
    _definition_fields(body.task, body.payload, body.queue, editor)
    if await repository.DefinitionRepository(session, tenant_id).by_name(body.name) is not None:
        raise ConflictError(f"A task definition named {body.name!r} exists.")
    definition = TaskDefinition(
        tenant_id=tenant_id,
        name=body.name,
        task=body.task,
        payload=body.payload,
        queue=body.queue,
        schedule=schedules.to_stored(body.schedule),
        enabled=body.enabled,
        description=body.description,
    )
    session.add(definition)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"A task definition named {body.name!r} exists.") from None
    await session.refresh(definition)
    audit.record(
        session,
        tenant_id,
        "definition.created",
        editor.actor,
        ("definition", definition.id),
        {"name": definition.name, "task": definition.task},
    )
    return definition


async def get_definition(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> TaskDefinition:
    return await repository.DefinitionRepository(session, tenant_id).by_name_or_404(name)


async def update_definition(
    session: AsyncSession, name: str, patch: DefinitionPatch, editor: Editor
) -> TaskDefinition:
    definition = await get_definition(session, editor.tenant_id, name)
    changes = patch.model_dump(exclude_unset=True)
    payload = changes.get("payload", definition.payload)
    queue = changes.get("queue", definition.queue)
    _definition_fields(definition.task, payload, queue, editor)
    for key, value in changes.items():
        setattr(definition, key, value)
    if "schedule" in changes:
        definition.schedule = schedules.to_stored(patch.schedule)
        # Beat works out the new schedule's next tick at once.
        definition.next_due_at = None if definition.schedule is None else UNPLANNED
    await session.flush()
    await session.refresh(definition)
    audit.record(
        session,
        editor.tenant_id,
        "definition.changed",
        editor.actor,
        ("definition", definition.id),
        {"name": definition.name, "fields": sorted(changes)},
    )
    return definition


async def delete_definition(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, actor: str
) -> None:
    definition = await get_definition(session, tenant_id, name)
    await session.delete(definition)
    audit.record(
        session,
        tenant_id,
        "definition.deleted",
        actor,
        ("definition", definition.id),
        {"name": name},
    )


async def get_dead_letter(
    session: AsyncSession, tenant_id: uuid.UUID, letter_id: uuid.UUID
) -> DeadLetter:
    return await repository.DeadLetterRepository(session, tenant_id).get_or_404(letter_id)


async def replayable_dead_letter(
    session: AsyncSession, tenant_id: uuid.UUID, letter_id: uuid.UUID
) -> DeadLetter:
    letter = await get_dead_letter(session, tenant_id, letter_id)
    if letter.payload is None:
        raise ConflictError("This dead letter has no stored payload to replay.")
    return letter


def replayed(session: AsyncSession, letter: DeadLetter, run_id: uuid.UUID, actor: str) -> None:
    """Link the dead letter to the run that replays it, and audit the replay."""
    letter.replayed_run_id = run_id
    audit.record(
        session,
        letter.tenant_id,
        "dead_letter.replayed",
        actor,
        ("dead_letter", letter.id),
        {"task": letter.task, "run_id": str(run_id)},
    )


async def delete_dead_letter(
    session: AsyncSession, tenant_id: uuid.UUID, letter_id: uuid.UUID, actor: str
) -> None:
    letter = await get_dead_letter(session, tenant_id, letter_id)
    await session.delete(letter)
    target = ("dead_letter", letter_id)
    audit.record(session, tenant_id, "dead_letter.deleted", actor, target, {"task": letter.task})


async def queue_depths(settings: Settings) -> dict[str, int] | None:
    """Messages ready per queue, asked of the broker (None without one, or when it does not
    answer within its publish timeout)."""
    if settings.celery_broker_url is None:
        return None
    try:
        return await asyncio.to_thread(metrics.queue_depths, settings)
    except Exception as exc:  # the page shows the rest; the broker's own health check says why
        logger.warning("queue depths unavailable", extra={"error": repr(exc)})
        return None


BUSIEST_TENANTS = 20


async def busiest_tenants(session: AsyncSession) -> list[TenantLoad]:
    """The tenants with the most runs in flight or waiting for capacity, busiest first."""
    counts = await metrics.busiest_tenants(await session.connection(), BUSIEST_TENANTS)
    ids = {uuid.UUID(tenant_id) for tenant_id, _ in counts}
    tenants = {
        tenant.id: tenant
        for tenant in await session.scalars(select(Tenant).where(Tenant.id.in_(ids)))
    }
    loads = [
        TenantLoad(
            tenant_id=tenant.id,
            name=tenant.name,
            slug=tenant.slug,
            in_flight=counts.get((str(tenant.id), "in_flight"), 0),
            waiting_for_capacity=counts.get((str(tenant.id), "waiting_for_capacity"), 0),
        )
        for tenant in tenants.values()
    ]
    return sorted(loads, key=lambda load: (-load.in_flight - load.waiting_for_capacity, load.slug))


async def share(session: AsyncSession, settings: Settings, tenant_id: uuid.UUID) -> ShareOut:
    """The tenant's share of the workers now: its cap, runs in flight, started and waiting."""
    found = await admission.share(
        await session.connection(), tenant_id, admission.Policy.of(settings)
    )
    return ShareOut(
        limit=found.limit,
        in_flight=found.in_flight,
        started=found.started,
        waiting_for_capacity=found.waiting_for_capacity,
    )
