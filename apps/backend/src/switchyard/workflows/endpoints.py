"""/api/v1/workflows: named, versioned graphs of tasks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status

from switchyard.auth.dependencies import PrincipalDep, TenantDep, require_scope
from switchyard.db.session import after_commit
from switchyard.logging import request_id_var
from switchyard.platform.dependencies import RateLimiterDep, RegistryDep, ServicesDep, SessionDep
from switchyard.platform.runs import changes
from switchyard.platform.workflows import engine
from switchyard.workflows import service
from switchyard.workflows.schemas import (
    WorkflowIn,
    WorkflowName,
    WorkflowOut,
    WorkflowPage,
    WorkflowRunIn,
    WorkflowRunOut,
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

    after_commit(session, announce)
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
    starter = service.Starter(
        principal.tenant_id,
        request_id_var.get(),
        principal.actor,
        engine.Context.of(registry, services.settings),
    )
    run, advanced = await service.start_run(session, name, body, starter, idempotency_key)
    if advanced is None:
        response.status_code = status.HTTP_200_OK
    else:
        started = advanced

        async def publish() -> None:
            await engine.published(services, started)

        after_commit(session, publish)
    response.headers["Location"] = f"/api/v1/workflows/runs/{run.id}"
    return await service.run_view(session, principal.tenant_id, run.id)


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
