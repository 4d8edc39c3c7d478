"""Data source rows: every query scoped to the tenant; URLs encrypted before they are stored;
every change audited in its tenant."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from switchyard.auth.principal import Principal
from switchyard.datasources.connect import parse
from switchyard.datasources.crypto import DataSourceCipher
from switchyard.datasources.repository import DataSourceRepository
from switchyard.datasources.schemas import DataSourceCreate, DataSourceRead, DataSourceUpdate
from switchyard.db.models import DataSourceConnection
from switchyard.errors import ConflictError
from switchyard.platform import audit
from switchyard.settings import Settings


def read(source: DataSourceConnection, cipher: DataSourceCipher) -> DataSourceRead:
    connection = parse(cipher.decrypt(source.encrypted_connection_url))
    return DataSourceRead(
        id=source.id,
        name=source.name,
        kind=connection.kind,
        url=connection.redacted,
        created_at=source.created_at,
        updated_at=source.updated_at,
    )


async def _flush(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"A data source named {name!r} exists already.") from None


def _audit(
    session: AsyncSession,
    principal: Principal,
    action: str,
    source_id: uuid.UUID,
    details: dict[str, str | list[str]],
) -> None:
    target = ("data_source", source_id)
    audit.record(session, principal.tenant_id, action, principal.actor, target, details)


async def create(
    session: AsyncSession, principal: Principal, body: DataSourceCreate, cipher: DataSourceCipher
) -> DataSourceConnection:
    source = DataSourceConnection(
        tenant_id=principal.tenant_id,
        name=body.name,
        kind=parse(body.url).kind,
        encrypted_connection_url=cipher.encrypt(body.url),
        created_by=principal.user_id,
    )
    session.add(source)
    await _flush(session, body.name)
    await session.refresh(source)
    _audit(
        session,
        principal,
        "data_source.created",
        source.id,
        {"name": source.name, "kind": source.kind},
    )
    return source


async def update(
    session: AsyncSession,
    principal: Principal,
    source_id: uuid.UUID,
    body: DataSourceUpdate,
    cipher: DataSourceCipher,
) -> DataSourceConnection:
    source = await DataSourceRepository(session, principal.tenant_id).get_or_404(source_id)
    if body.name is not None:
        source.name = body.name
    if body.url is not None:
        source.kind = parse(body.url).kind
        source.encrypted_connection_url = cipher.encrypt(body.url)
    await _flush(session, source.name)
    await session.refresh(source)
    fields = sorted(body.model_dump(exclude_unset=True))
    _audit(
        session,
        principal,
        "data_source.changed",
        source_id,
        {"name": source.name, "fields": fields},
    )
    return source


async def delete(session: AsyncSession, principal: Principal, source_id: uuid.UUID) -> None:
    source = await DataSourceRepository(session, principal.tenant_id).get_or_404(source_id)
    await session.delete(source)
    _audit(session, principal, "data_source.deleted", source_id, {"name": source.name})


def tested(
    session: AsyncSession, principal: Principal, source_id: uuid.UUID, run_id: uuid.UUID
) -> None:
    """Record that a connectivity test of the source was queued as run `run_id`."""
    _audit(session, principal, "data_source.tested", source_id, {"run_id": str(run_id)})


async def rotate_keys(session: AsyncSession, cipher: DataSourceCipher) -> int:
    """Re-encrypt every stored URL with the newest key (all tenants: an operator's job)."""
    rotated = 0
    rows = await session.scalars(select(DataSourceConnection).with_for_update())
    for source in rows:
        source.encrypted_connection_url = cipher.rotate(source.encrypted_connection_url)
        rotated += 1
    await session.flush()
    return rotated


async def rotate_all(settings: Settings) -> int:
    """`switchyard rotate-data-source-keys`: one transaction; nothing changes on a failure."""
    assert settings.database is not None
    engine = create_async_engine(
        settings.database, pool_size=1, max_overflow=0, hide_parameters=True
    )
    try:
        async with async_sessionmaker(engine).begin() as session:
            return await rotate_keys(session, DataSourceCipher.from_settings(settings))
    finally:
        await engine.dispose()
