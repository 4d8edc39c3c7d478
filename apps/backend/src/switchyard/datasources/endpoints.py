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
    source = await service.create(session, principal, body, cipher)
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
    return service.read(await service.update(session, principal, source_id, body, cipher), cipher)


@router.delete("/{source_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=WRITE)
async def delete_data_source(
    source_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> None:
    await service.delete(session, principal, source_id)


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
    await limiter.enforce(
        principal.runs_rate_limit(services.settings.rate_limit_task_runs), "runs", str(tenant_id)
    )
    body = RunRequest(task=TEST_TASK, payload={"data_source_id": str(source_id)})
    run, accepted = await submit(body)
    service.tested(session, principal, source_id, run.id)
    return accepted
