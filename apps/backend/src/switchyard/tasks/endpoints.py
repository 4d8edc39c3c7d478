"""/api/v1/tasks: registry, definitions, runs, live events and dead letters."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, status
from sse_starlette import EventSourceResponse

from switchyard.auth.dependencies import PrincipalDep, TenantDep, require_scope
from switchyard.db.models import RunState
from switchyard.platform import workers
from switchyard.platform.dependencies import (
    RateLimiterDep,
    RegistryDep,
    ServicesDep,
    SessionDep,
)
from switchyard.tasks import bulk, follow, repository, service
from switchyard.tasks.dependencies import SubmitterDep
from switchyard.tasks.schemas import (
    BulkRunsAccepted,
    BulkRunsRequest,
    DeadLetterOut,
    DefinitionIn,
    DefinitionOut,
    DefinitionPatch,
    RegisteredTasks,
    RunAccepted,
    RunOut,
    RunPage,
    RunRequest,
    UtcDatetime,
    WorkersOverview,
)

router = APIRouter(prefix="/tasks", tags=["tasks"])


async def get_editor(
    principal: PrincipalDep, services: ServicesDep, registry: RegistryDep
) -> service.Editor:
    """Who changes definitions in this request (its tenant, scopes and environment)."""
    return service.Editor(
        principal.tenant_id,
        principal.scopes,
        services.settings.environment,
        registry,
        principal.actor,
    )


EditorDep = Annotated[service.Editor, Depends(get_editor)]

MAX_PAGE_SIZE = 200
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
]


@router.get("/registered", dependencies=[Depends(require_scope("tasks:read"))])
async def registered_tasks(
    registry: RegistryDep, session: SessionDep, principal: PrincipalDep
) -> RegisteredTasks:
    """The tasks the caller may run (public ones whose scope it holds), and its definitions."""
    definitions = await repository.DefinitionRepository(session, principal.tenant_id).listed()
    return RegisteredTasks(
        tasks=service.registered(registry, principal.scopes),
        definitions=[DefinitionOut.of(definition) for definition in definitions],
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def register_definition(
    body: DefinitionIn, session: SessionDep, editor: EditorDep
) -> DefinitionOut:
    return DefinitionOut.of(await service.create_definition(session, body, editor))


@router.get("/definitions/{name}", dependencies=[Depends(require_scope("tasks:read"))])
async def get_definition(name: str, session: SessionDep, tenant_id: TenantDep) -> DefinitionOut:
    return DefinitionOut.of(await service.get_definition(session, tenant_id, name))


@router.patch("/definitions/{name}", dependencies=[Depends(require_scope("tasks:admin"))])
async def update_definition(
    name: str, patch: DefinitionPatch, session: SessionDep, editor: EditorDep
) -> DefinitionOut:
    return DefinitionOut.of(await service.update_definition(session, name, patch, editor))


@router.delete(
    "/definitions/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def delete_definition(name: str, session: SessionDep, principal: PrincipalDep) -> None:
    await service.delete_definition(session, principal.tenant_id, name, principal.actor)


@router.post(
    "/run", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(require_scope("tasks:run"))]
)
async def run_task(
    body: RunRequest,
    services: ServicesDep,
    submit: SubmitterDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
    idempotency_key: IdempotencyKey = None,
) -> RunAccepted:
    limit = principal.runs_rate_limit(services.settings.rate_limit_task_runs)
    await limiter.enforce(limit, "runs", str(principal.tenant_id))
    _, accepted = await submit(
        body,
        idempotency_key=idempotency_key,
        over_rest=True,
    )
    return accepted


@router.post(
    "/runs",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_scope("tasks:run"))],
    responses={
        207: {
            "model": BulkRunsAccepted,
            "description": "The broker refused some runs: each result says whether its run "
            "was accepted (in the ledger, published) or not (not in the ledger)",
        },
        503: {"description": "The broker refused every run; none is in the ledger"},
    },
)
async def run_tasks(
    body: BulkRunsRequest,
    services: ServicesDep,
    submit: SubmitterDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
) -> BulkRunsAccepted:
    """Submit up to TASK_BULK_MAX_RUNS runs at once, each with its own task or definition,
    payload, delay and optional idempotency key. Every run is checked first: one invalid run
    is a 422 naming it by index (`body.runs.3.payload.n`), and nothing is accepted. The runs
    count against the tenant's run rate limit and fair share one by one."""
    limit = principal.runs_rate_limit(services.settings.rate_limit_task_runs)
    bulk.check_size(len(body.runs), services.settings, limit)
    await limiter.enforce(limit, "runs", str(principal.tenant_id), cost=len(body.runs))
    return await submit.many(body.runs)


@router.get("/", dependencies=[Depends(require_scope("tasks:read"))])
async def list_runs(
    session: SessionDep,
    tenant_id: TenantDep,
    services: ServicesDep,
    state: RunState | None = None,
    task: str | None = Query(default=None, max_length=200),
    since: Annotated[UtcDatetime | None, Query(description="Submitted at or after")] = None,
    until: Annotated[UtcDatetime | None, Query(description="Submitted before")] = None,
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
) -> RunPage:
    page, next_cursor = await repository.RunRepository(session, tenant_id).page_of(
        state=state, task=task, cursor=cursor, limit=limit, since=since, until=until
    )
    return RunPage(
        items=[RunOut.of(run) for run in page],
        next_cursor=next_cursor,
        share=await service.share(session, services.settings, tenant_id),
    )


@router.get("/workers", dependencies=[Depends(require_scope("tasks:read"))])
async def workers_overview(
    session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> WorkersOverview:
    """The tenant's runs in flight against its share; a superuser also sees the queue depths
    and every worker process online (runs in flight, slots, loop lag)."""
    share = await service.share(session, services.settings, principal.tenant_id)
    overview = WorkersOverview(share=share)
    if principal.is_superuser:
        overview.queues = await service.queue_depths(services.settings)
        overview.workers = await workers.online(services.cache)
        overview.tenants = await service.busiest_tenants(session)
    return overview


@router.get("/dead-letters", dependencies=[Depends(require_scope("tasks:read"))])
async def list_dead_letters(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
    task_id: Annotated[uuid.UUID | None, Query(description="Only this run's")] = None,
) -> list[DeadLetterOut]:
    letters = repository.DeadLetterRepository(session, tenant_id)
    return [DeadLetterOut.of(letter) for letter in await letters.newest(limit, task_id)]


@router.post(
    "/dead-letters/{letter_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def replay_dead_letter(
    letter_id: uuid.UUID,
    session: SessionDep,
    submit: SubmitterDep,
    principal: PrincipalDep,
) -> RunAccepted:
    """One replay per dead letter: replaying again (even at the same moment) answers with the
    run the first replay made (the letter's id is the run's idempotency key)."""
    letter = await service.replayable_dead_letter(session, principal.tenant_id, letter_id)
    run, accepted = await submit(
        RunRequest(task=letter.task, payload=letter.payload, queue=letter.queue),
        idempotency_key=service.replay_key(letter.id),
        replay_of=letter.run_id,
        over_rest=True,
    )
    service.replayed(session, letter, run.id, principal.actor)
    return accepted


@router.delete(
    "/dead-letters/{letter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def delete_dead_letter(
    letter_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> None:
    await service.delete_dead_letter(session, principal.tenant_id, letter_id, principal.actor)


@router.get("/{task_id}", dependencies=[Depends(require_scope("tasks:read"))])
async def get_run(
    task_id: uuid.UUID, session: SessionDep, services: ServicesDep, tenant_id: TenantDep
) -> RunOut:
    return await service.run_view(session, services.cache, tenant_id, task_id)


@router.post("/{task_id}/cancel", dependencies=[Depends(require_scope("tasks:run"))])
async def cancel_run(
    task_id: uuid.UUID,
    session: SessionDep,
    services: ServicesDep,
    tenant_id: TenantDep,
) -> RunOut:
    """A queued or delayed run is never started; a started one is stopped by the worker that
    holds it within WORKER_CANCEL_POLL_SECONDS (its coroutine cancelled, its message acked)."""
    return RunOut.of(await service.cancel(session, services, tenant_id, task_id))


@router.get(
    "/{task_id}/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(require_scope("tasks:read"))],
)
async def run_events(
    task_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    tenant_id: TenantDep,
) -> EventSourceResponse:
    """Server-Sent Events: the current state first, then each change, closing after a final one.
    A stopping gateway ends the stream with a `reconnect` event (and `retry`)."""
    await service.get_run(session, tenant_id, task_id)
    pubsub = await follow.subscribe(services, task_id)  # 503 when Redis is down
    return follow.live(request, lambda: follow.follow(services, tenant_id, task_id, pubsub))
