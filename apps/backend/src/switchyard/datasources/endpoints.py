"""/data-sources: a tenant's external databases; URLs encrypted at rest, passwords never shown."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request, Response, status

from switchyard.auth.dependencies import PrincipalDep, TenantDep, require_scope
from switchyard.datasources import service
from switchyard.datasources.crypto import DataSourceCipher
from switchyard.datasources.repository import DataSourceRepository
from switchyard.datasources.schemas import (
    DataSourceCreate,
    DataSourcePage,
    DataSourceRead,
    DataSourceUpdate,
)
from switchyard.datasources.tasks import TEST_TASK
from switchyard.platform import audit
from switchyard.platform.dependencies import (
    RateLimiterDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
)
from switchyard.tasks.dependencies import SubmitterDep
from switchyard.tasks.schemas import RunAccepted, RunRequest

router = APIRouter(prefix="/data-sources", tags=["data sources"])
READ = [Depends(require_scope("datasources:read"))]
WRITE = [Depends(require_scope("datasources:write"))]


def _cipher(settings: SettingsDep) -> DataSourceCipher:
    return DataSourceCipher.from_settings(settings)


CipherDep = Depends(_cipher)


@router.get("", dependencies=READ)
async def list_data_sources(
    session: SessionDep, tenant_id: TenantDep, cipher: DataSourceCipher = CipherDep
) -> DataSourcePage:
    sources = await DataSourceRepository(session, tenant_id).listed()
    return DataSourcePage(items=[service.read(source, cipher) for source in sources])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=WRITE)
async def create_data_source(
    body: DataSourceCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    cipher: DataSourceCipher = CipherDep,
) -> DataSourceRead:
    source = await service.create(session, principal.tenant_id, body, cipher, principal.user_id)
    audit.record(
        session,
        principal.tenant_id,
        "data_source.created",
        principal.actor,
        ("data_source", source.id),
        {"name": source.name, "kind": source.kind},
    )
    response.headers["Location"] = request.url_for("get_data_source", source_id=source.id).path
    return service.read(source, cipher)


@router.get("/{source_id}", dependencies=READ)
async def get_data_source(
    source_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    cipher: DataSourceCipher = CipherDep,
) -> DataSourceRead:
    return service.read(
        await DataSourceRepository(session, tenant_id).get_or_404(source_id), cipher
    )


@router.patch("/{source_id}", dependencies=WRITE)
async def update_data_source(
    source_id: uuid.UUID,
    body: DataSourceUpdate,
    session: SessionDep,
    principal: PrincipalDep,
    cipher: DataSourceCipher = CipherDep,
) -> DataSourceRead:
    source = await DataSourceRepository(session, principal.tenant_id).get_or_404(source_id)
    updated = await service.update(session, source, body, cipher)
    audit.record(
        session,
        principal.tenant_id,
        "data_source.changed",
        principal.actor,
        ("data_source", source_id),
        {"name": updated.name, "fields": sorted(body.model_dump(exclude_unset=True))},
    )
    return service.read(updated, cipher)


@router.delete("/{source_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=WRITE)
async def delete_data_source(
    source_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> None:
    source = await DataSourceRepository(session, principal.tenant_id).get_or_404(source_id)
    await session.delete(source)
    audit.record(
        session,
        principal.tenant_id,
        "data_source.deleted",
        principal.actor,
        ("data_source", source_id),
        {"name": source.name},
    )


@router.post("/{source_id}/test", status_code=status.HTTP_202_ACCEPTED, dependencies=WRITE)
async def test_data_source(
    source_id: uuid.UUID,
    session: SessionDep,
    services: ServicesDep,
    submit: SubmitterDep,
    principal: PrincipalDep,
    limiter: RateLimiterDep,
) -> RunAccepted:
    """Queue a connectivity test; its outcome is the run's result (`GET /tasks/{task_id}`)."""
    tenant_id = principal.tenant_id
    await DataSourceRepository(session, tenant_id).get_or_404(source_id)
    await limiter.enforce(services.settings.rate_limit_task_runs, "runs", str(tenant_id))
    body = RunRequest(task=TEST_TASK, payload={"data_source_id": str(source_id)})
    run, accepted = await submit(body)
    audit.record(
        session,
        tenant_id,
        "data_source.tested",
        principal.actor,
        ("data_source", source_id),
        {"run_id": str(run.id)},
    )
    return accepted
