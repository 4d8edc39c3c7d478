"""/api/v1/tasks: registry, definitions, runs, live events and dead letters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from sse_starlette import EventSourceResponse

from switchyard.auth.principal import Principal
from switchyard.db import pagination
from switchyard.db.models import RunState, TaskRun
from switchyard.dependencies import (
    BrokerDep,
    PrincipalDep,
    RateLimiterDep,
    RegistryDep,
    ServicesDep,
    SessionDep,
    TenantDep,
    enforce,
    require_scope,
)
from switchyard.errors import ConflictError
from switchyard.logging import request_id_var
from switchyard.platform import admission, ledger
from switchyard.platform.broker import Broker
from switchyard.platform.registry import TaskRegistry
from switchyard.services.container import Services
from switchyard.tasks import follow, repository, service
from switchyard.tasks.schemas import (
    DeadLetterOut,
    DefinitionIn,
    DefinitionOut,
    DefinitionPatch,
    RegisteredTasks,
    RunAccepted,
    RunOut,
    RunPage,
    RunRequest,
    ShareOut,
    state_detail,
)

router = APIRouter(prefix="/tasks", tags=["tasks"])

MAX_PAGE_SIZE = 200
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
]


async def accept_run(
    body: RunRequest,
    request: Request,
    response: Response,
    services: Services,
    broker: Broker,
    registry: TaskRegistry,
    principal: Principal,
    *,
    idempotency_key: str | None = None,
    replay_of: uuid.UUID | None = None,
    over_rest: bool = False,
) -> tuple[TaskRun, RunAccepted]:
    """Submit a run for a route: the ledger row, the publish, and a 202 with its Location;
    the run records who submitted it. `over_rest`: the caller names the task (POST
    /tasks/run, a replay), so it must be one the caller may run."""
    assert services.sessions is not None
    marks = cast(ledger.PublishedMarks, request.app.state.published_marks)
    submitter = service.Submitter(
        principal.tenant_id,
        request_id_var.get(),
        principal.actor,
        scopes=principal.scopes if over_rest else None,
        internal_ok=replay_of is not None,
    )
    run, _ = await service.submit(
        services.sessions,
        broker.publisher,
        marks,
        registry,
        body,
        submitter,
        idempotency_key=idempotency_key,
        max_countdown=services.settings.task_max_countdown_seconds,
        settings=services.settings,
        dispatcher=services.admission,
        replay_of=replay_of,
    )
    response.headers["Location"] = _run_location(request, run.id)
    accepted = RunAccepted(
        task_id=run.id, state=run.state, state_detail=state_detail(run), eta=run.eta
    )
    return run, accepted


def _run_location(request: Request, run_id: uuid.UUID) -> str:
    """What `request.url_for("get_run", ...).path` gives, without walking every route on each
    submission: the path template is worked out once per app."""
    template: str | None = getattr(request.app.state, "run_location", None)
    if template is None:
        template = str(request.app.url_path_for("get_run", task_id="{task_id}"))
        request.app.state.run_location = template
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/") + template.format(task_id=run_id)


@router.get("/registered", dependencies=[Depends(require_scope("tasks:read"))])
async def registered_tasks(
    registry: RegistryDep, session: SessionDep, principal: PrincipalDep
) -> RegisteredTasks:
    """The tasks the caller may run (public ones whose scope it holds), and its definitions."""
    definitions = await repository.definitions(session, principal.tenant_id)
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
    body: DefinitionIn,
    registry: RegistryDep,
    session: SessionDep,
    principal: PrincipalDep,
    services: ServicesDep,
) -> DefinitionOut:
    editor = service.Editor(principal.scopes, services.settings.environment)
    definition = await service.create_definition(
        session, registry, principal.tenant_id, body, editor
    )
    return DefinitionOut.of(definition)


@router.get("/definitions/{name}", dependencies=[Depends(require_scope("tasks:read"))])
async def get_definition(name: str, session: SessionDep, tenant_id: TenantDep) -> DefinitionOut:
    return DefinitionOut.of(await service.get_definition(session, tenant_id, name))


@router.patch("/definitions/{name}", dependencies=[Depends(require_scope("tasks:admin"))])
async def update_definition(
    name: str,
    patch: DefinitionPatch,
    registry: RegistryDep,
    session: SessionDep,
    principal: PrincipalDep,
    services: ServicesDep,
) -> DefinitionOut:
    editor = service.Editor(principal.scopes, services.settings.environment)
    definition = await service.update_definition(
        session, registry, principal.tenant_id, name, patch, editor
    )
    return DefinitionOut.of(definition)


@router.delete(
    "/definitions/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def delete_definition(name: str, session: SessionDep, tenant_id: TenantDep) -> None:
    await service.delete_definition(session, tenant_id, name)


@router.post(
    "/run", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(require_scope("tasks:run"))]
)
async def run_task(
    body: RunRequest,
    request: Request,
    response: Response,
    services: ServicesDep,
    broker: BrokerDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
    idempotency_key: IdempotencyKey = None,
) -> RunAccepted:
    limit, tenant = services.settings.rate_limit_task_runs, str(principal.tenant_id)
    await enforce(limiter, limit, "runs", tenant)
    _, accepted = await accept_run(
        body,
        request,
        response,
        services,
        broker,
        registry,
        principal,
        idempotency_key=idempotency_key,
        over_rest=True,
    )
    return accepted


@router.get("/", dependencies=[Depends(require_scope("tasks:read"))])
async def list_runs(
    session: SessionDep,
    tenant_id: TenantDep,
    services: ServicesDep,
    state: RunState | None = None,
    task: str | None = Query(default=None, max_length=200),
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
) -> RunPage:
    after = pagination.parse_cursor(cursor)
    rows = await repository.runs_page(
        session, tenant_id, state=state, task=task, after=after, limit=limit
    )
    page, next_cursor = pagination.cut(rows, limit)
    connection = await session.connection()
    share = await admission.share(
        connection, tenant_id, services.settings.tenant_max_runs_in_flight
    )
    return RunPage(
        items=[RunOut.of(run) for run in page],
        next_cursor=next_cursor,
        share=ShareOut(
            limit=share.limit,
            in_flight=share.in_flight,
            started=share.started,
            waiting_for_capacity=share.waiting_for_capacity,
        ),
    )


@router.get("/dead-letters", dependencies=[Depends(require_scope("tasks:read"))])
async def list_dead_letters(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
) -> list[DeadLetterOut]:
    return [
        DeadLetterOut.of(letter)
        for letter in await repository.dead_letters(session, tenant_id, limit)
    ]


@router.post(
    "/dead-letters/{letter_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def replay_dead_letter(
    letter_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    broker: BrokerDep,
    registry: RegistryDep,
    principal: PrincipalDep,
) -> RunAccepted:
    """One replay per dead letter: replaying again (even at the same moment) answers with the
    run the first replay made (the letter's id is the run's idempotency key)."""
    letter = await service.get_dead_letter(session, principal.tenant_id, letter_id)
    if letter.payload is None:
        raise ConflictError("This dead letter has no stored payload to replay.")
    run, accepted = await accept_run(
        RunRequest(task=letter.task, payload=letter.payload, queue=letter.queue),
        request,
        response,
        services,
        broker,
        registry,
        principal,
        idempotency_key=service.replay_key(letter.id),
        replay_of=letter.run_id,
        over_rest=True,
    )
    letter.replayed_run_id = run.id
    return accepted


@router.delete(
    "/dead-letters/{letter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def delete_dead_letter(
    letter_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> None:
    await session.delete(await service.get_dead_letter(session, tenant_id, letter_id))


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
    run = await service.cancel(session, tenant_id, task_id)
    await session.commit()
    await follow.announce(services, run)
    if services.admission is not None and run.admitted_at is not None:
        await services.admission.try_release(tenant_id)  # its slot is free for the next run
    return RunOut.of(run)


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
    """Server-Sent Events: the current state first, then each change, closing after a final one."""
    await service.get_run(session, tenant_id, task_id)
    pubsub = await follow.subscribe(services, task_id)  # 503 when Redis is down

    async def stream() -> AsyncIterator[dict[str, Any]]:
        async for event in follow.follow(services, tenant_id, task_id, pubsub):
            if await request.is_disconnected():
                return
            yield event

    return EventSourceResponse(stream(), ping=15)
