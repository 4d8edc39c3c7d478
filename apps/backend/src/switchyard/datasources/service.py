"""Data source rows: every query scoped to the tenant; URLs encrypted before they are stored."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from switchyard.datasources.connect import parse
from switchyard.datasources.crypto import DataSourceCipher
from switchyard.datasources.schemas import DataSourceCreate, DataSourceRead, DataSourceUpdate
from switchyard.db.models import DataSourceConnection
from switchyard.errors import ConflictError
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


async def create(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    body: DataSourceCreate,
    cipher: DataSourceCipher,
    created_by: uuid.UUID | None,
) -> DataSourceConnection:
    source = DataSourceConnection(
        tenant_id=tenant_id,
        name=body.name,
        kind=parse(body.url).kind,
        encrypted_connection_url=cipher.encrypt(body.url),
        created_by=created_by,
    )
    session.add(source)
    await _flush(session, body.name)
    await session.refresh(source)
    return source


async def update(
    session: AsyncSession,
    source: DataSourceConnection,
    body: DataSourceUpdate,
    cipher: DataSourceCipher,
) -> DataSourceConnection:
    if body.name is not None:
        source.name = body.name
    if body.url is not None:
        source.kind = parse(body.url).kind
        source.encrypted_connection_url = cipher.encrypt(body.url)
    await _flush(session, source.name)
    await session.refresh(source)
    return source


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
