"""/api/v1/workflows: named, versioned graphs of tasks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette import EventSourceResponse

from switchyard.auth.dependencies import PrincipalDep, TenantDep, require_scope
from switchyard.auth.principal import Principal
from switchyard.db.models import WorkflowState
from switchyard.db.session import after_commit
from switchyard.errors import InvalidInputError
from switchyard.logging import request_id_var
from switchyard.platform import events
from switchyard.platform.dependencies import RateLimiterDep, RegistryDep, ServicesDep, SessionDep
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.runs import changes
from switchyard.platform.workflows import engine
from switchyard.services.container import Services
from switchyard.tasks.follow import live
from switchyard.tasks.service import Submitter
from switchyard.workflows import follow, service
from switchyard.workflows.schemas import (
    StartedRunOut,
    WorkflowIn,
    WorkflowName,
    WorkflowOut,
    WorkflowPage,
    WorkflowRunIn,
    WorkflowRunOut,
    WorkflowRunPage,
    WorkflowRunsAccepted,
    WorkflowRunsIn,
    WorkflowRunSummary,
    WorkflowUpdate,
)

router = APIRouter(prefix="/workflows", tags=["workflows"])

MAX_PAGE_SIZE = 200


async def get_editor(
    principal: PrincipalDep, services: ServicesDep, registry: RegistryDep
) -> service.Editor:
    return service.Editor(
        principal.tenant_id,
        principal.scopes,
        services.settings.environment,
        registry,
        services.settings.workflow_max_steps,
        principal.actor,
    )


EditorDep = Annotated[service.Editor, Depends(get_editor)]
NamePath = Annotated[WorkflowName, Path()]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
]


@router.get("/runs/{run_id}", dependencies=[Depends(require_scope("tasks:read"))])
async def get_workflow_run(
    run_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> WorkflowRunOut:
    """A workflow run as a graph: every step's state, timing, runs and (small) result."""
    return await service.run_view(session, tenant_id, run_id)


@router.get("/runs", dependencies=[Depends(require_scope("tasks:read"))])
async def list_workflow_runs(
    session: SessionDep,
    tenant_id: TenantDep,
    workflow: Annotated[WorkflowName | None, Query()] = None,
    state: Annotated[WorkflowState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WorkflowRunPage:
    """The tenant's workflow runs, newest first; of one workflow, or in one state, if asked."""
    rows, next_cursor = await service.page_runs(
        session, tenant_id, workflow, state.value if state else None, cursor, limit
    )
    return WorkflowRunPage(
        items=[
            WorkflowRunSummary(
                id=run.id,
                workflow=definition.name,
                version=definition.version,
                state=run.state,
                error=run.error_message,
                steps_left=run.steps_left,
                created_at=run.created_at,
                finished_at=run.finished_at,
            )
            for run, definition in rows
        ],
        next_cursor=next_cursor,
    )


@router.get(
    "/runs/{run_id}/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(require_scope("tasks:read"))],
)
async def workflow_run_events(
    run_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    tenant_id: TenantDep,
) -> EventSourceResponse:
    """Server-Sent Events: the run's graph (as GET /workflows/runs/{id}) now, then each time
    it changed (changes within half a second make one event), closing after the run ended. A
    stopping gateway ends the stream with a `reconnect` event (and `retry`)."""
    await service.run_view(session, tenant_id, run_id)  # 404 before the stream starts
    pubsub = await follow.subscribe(services, run_id)  # 503 when Redis is down
    return live(request, lambda: follow.follow(services, tenant_id, run_id, pubsub))


@router.post("/runs/{run_id}/cancel", dependencies=[Depends(require_scope("tasks:run"))])
async def cancel_workflow_run(
    run_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> WorkflowRunOut:
    """Cancel a running workflow run: its steps not started are skipped, its runs not final
    cancelled (a started one stops at its worker's next cancel poll, as any run). 409 once it
    has ended."""
    cancelled = await service.cancel_run(session, principal.tenant_id, run_id, principal.actor)

    async def announce() -> None:
        for run in cancelled:
            await changes.changed(services, run)
        events.announce_workflow(services.announcer, services.settings.cache_namespace, run_id)

    after_commit(session, announce)
    return await service.run_view(session, principal.tenant_id, run_id)


@router.post(
    "/runs/{run_id}/steps/{step}/replay", dependencies=[Depends(require_scope("tasks:run"))]
)
async def replay_workflow_step(
    run_id: uuid.UUID,
    step: Annotated[str, Path(max_length=63)],
    session: SessionDep,
    services: ServicesDep,
    registry: RegistryDep,
    principal: PrincipalDep,
) -> WorkflowRunOut:
    """Start a failed workflow run again from its failed step: the steps that did not end
    well (the failed one, and those it cancelled or skipped) wait again, and each runs once its
    parents are done; the steps that succeeded keep their results. Their earlier runs stay in
    the ledger, apart from the workflow. 409 unless the run failed and the step did."""
    starter = _starter(principal, services, registry)
    advanced = await service.replay_step(session, starter, run_id, step)
    _publish_after_commit(session, services, advanced)
    return await service.run_view(session, principal.tenant_id, run_id)


@router.post(
    "/{name}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_scope("tasks:run"))],
    responses={200: {"model": WorkflowRunOut, "description": "Its Idempotency-Key's run"}},
)
async def start_workflow_run(
    name: NamePath,
    body: WorkflowRunIn,
    session: SessionDep,
    services: ServicesDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> WorkflowRunOut:
    """Start a run of the workflow (its newest version, or `version`): its first steps are
    in the ledger when this answers, and each next step becomes due as its parents end. With
    an Idempotency-Key used before, that run (200)."""
    limit = principal.runs_rate_limit(services.settings.rate_limit_task_runs)
    await limiter.enforce(limit, "runs", str(principal.tenant_id))
    starter = _starter(principal, services, registry)
    run, advanced = await service.start_run(session, name, body, starter, idempotency_key)
    if advanced is None:
        response.status_code = status.HTTP_200_OK
    else:
        _publish_after_commit(session, services, advanced)
    response.headers["Location"] = f"/api/v1/workflows/runs/{run.id}"
    return await service.run_view(session, principal.tenant_id, run.id)


@router.post(
    "/{name}/runs/bulk",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_scope("tasks:run"))],
)
async def start_workflow_runs(
    name: NamePath,
    body: WorkflowRunsIn,
    session: SessionDep,
    services: ServicesDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
) -> WorkflowRunsAccepted:
    """Start up to WORKFLOW_BULK_MAX_RUNS runs of one workflow at once, each with its input
    and optional idempotency key, in one transaction: all are started, or none (a key given
    twice is 422 naming it; a quota the new runs would pass, 429). A run whose key was used
    before is that run (`created: false`). They count against the run rate limit one by one."""
    most = services.settings.workflow_bulk_max_runs
    if len(body.runs) > most:
        raise InvalidInputError.on(
            "body.runs",
            f"A request may start at most {most} workflow runs (WORKFLOW_BULK_MAX_RUNS); "
            f"this one has {len(body.runs)}.",
            message=f"at most {most} items",
            type="too_long",
        )
    limit = principal.runs_rate_limit(services.settings.rate_limit_task_runs)
    await limiter.enforce(limit, "runs", str(principal.tenant_id), cost=len(body.runs))
    started, advanced = await service.start_runs(
        session, name, body, _starter(principal, services, registry)
    )
    _publish_after_commit(session, services, advanced)
    return WorkflowRunsAccepted(
        items=[
            StartedRunOut(index=index, id=run.id, state=run.state, created=created)
            for index, (run, created) in enumerate(started)
        ]
    )


def _starter(principal: Principal, services: Services, registry: TaskRegistry) -> service.Starter:
    return service.Starter(
        principal.tenant_id,
        request_id_var.get(),
        principal.actor,
        engine.Context.of(registry, services.settings),
        Submitter.of(principal, services),
    )


def _publish_after_commit(
    session: AsyncSession, services: Services, advanced: engine.Advanced
) -> None:
    async def publish() -> None:
        await engine.published(services, advanced)

    after_commit(session, publish)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def register_workflow(
    body: WorkflowIn, session: SessionDep, editor: EditorDep
) -> WorkflowOut:
    """Register a workflow (its version 1): every step's task, dependencies, references and
    payload are checked first; 422 names each failing step field."""
    return WorkflowOut.of(await service.create(session, body, editor))


@router.get("", dependencies=[Depends(require_scope("tasks:read"))])
async def list_workflows(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WorkflowPage:
    """The tenant's workflows, each at its newest version, most recently changed first."""
    rows, next_cursor = await service.page(session, tenant_id, cursor, limit)
    return WorkflowPage(items=[WorkflowOut.of(row) for row in rows], next_cursor=next_cursor)


@router.get("/{name}", dependencies=[Depends(require_scope("tasks:read"))])
async def get_workflow(name: NamePath, session: SessionDep, tenant_id: TenantDep) -> WorkflowOut:
    """The workflow's newest version."""
    return WorkflowOut.of(await service.latest(session, tenant_id, name))


@router.put(
    "/{name}",
    dependencies=[Depends(require_scope("tasks:admin"))],
    responses={201: {"model": WorkflowOut, "description": "A new version"}},
)
async def update_workflow(
    name: NamePath,
    body: WorkflowUpdate,
    session: SessionDep,
    editor: EditorDep,
    response: Response,
) -> WorkflowOut:
    """Its next version (201), or the newest (200) when it has these steps already. Runs
    started from an earlier version keep it."""
    definition, created = await service.update_steps(session, name, body, editor)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return WorkflowOut.of(definition)


@router.get("/{name}/versions/{version}", dependencies=[Depends(require_scope("tasks:read"))])
async def get_workflow_version(
    name: NamePath,
    version: Annotated[int, Path(ge=1, le=2_147_483_647)],
    session: SessionDep,
    tenant_id: TenantDep,
) -> WorkflowOut:
    """One version (kept while runs may use it, a deleted workflow's too)."""
    return WorkflowOut.of(await service.version(session, tenant_id, name, version))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_scope("tasks:admin"))],
)
async def delete_workflow(name: NamePath, session: SessionDep, principal: PrincipalDep) -> None:
    """Gone from the list and from new runs; its versions stay for the runs that use them."""
    await service.delete(session, principal.tenant_id, name, principal.actor)
