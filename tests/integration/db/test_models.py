from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from switchyard.db.models import (
    DataSourceConnection,
    DocumentStatus,
    KnowledgeDocument,
    Tenant,
    TenantStatus,
)


async def add_tenant(session: AsyncSession, slug: str | None = None) -> Tenant:
    tenant = Tenant(name="Acme", slug=slug or f"models-{uuid.uuid4().hex[:10]}")
    session.add(tenant)
    await session.flush()
    return tenant


async def test_tenant_gets_uuid_timestamps_and_active_status(db_session: AsyncSession) -> None:
    tenant = await add_tenant(db_session)
    await db_session.refresh(tenant)
    assert isinstance(tenant.id, uuid.UUID)
    assert tenant.status is TenantStatus.ACTIVE
    assert tenant.created_at.tzinfo is not None
    assert tenant.updated_at == tenant.created_at


async def test_database_fills_defaults_for_raw_inserts(db_session: AsyncSession) -> None:
    await db_session.execute(
        text("INSERT INTO tenants (name, slug) VALUES ('Raw', 'raw-models-test')")
    )
    row = (
        await db_session.execute(
            text("SELECT id, status FROM tenants WHERE slug='raw-models-test'")
        )
    ).one()
    assert isinstance(row.id, uuid.UUID)
    assert row.status == "active"


async def test_updated_at_moves_on_update(engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions.begin() as session:
        tenant = await add_tenant(session, f"upd-{uuid.uuid4().hex[:8]}")
    try:
        async with sessions.begin() as session:
            tenant = await session.get_one(Tenant, tenant.id)
            tenant.name = "Acme Ltd"
        async with sessions() as session:
            stored = await session.get_one(Tenant, tenant.id)
            assert stored.name == "Acme Ltd"
            assert stored.updated_at > stored.created_at
    finally:
        async with sessions.begin() as session:
            await session.execute(delete(Tenant).where(Tenant.id == tenant.id))


async def test_tenant_slug_is_unique(db_session: AsyncSession) -> None:
    first = await add_tenant(db_session)
    db_session.add(Tenant(name="Other", slug=first.slug))
    with pytest.raises(IntegrityError, match="uq_tenants_slug"):
        await db_session.flush()


async def test_tenant_status_is_constrained(db_session: AsyncSession) -> None:
    with pytest.raises(IntegrityError, match="ck_tenants_tenant_status"):
        await db_session.execute(
            text(
                "INSERT INTO tenants (name, slug, status) VALUES ('x', 'x-models-test', 'deleted')"
            )
        )


async def test_document_defaults_and_tenant_cascade(db_session: AsyncSession) -> None:
    tenant = await add_tenant(db_session)
    document = KnowledgeDocument(
        tenant_id=tenant.id,
        title="Handbook",
        filename="handbook.pdf",
        content_type="application/pdf",
        size_bytes=5 * 2**30,
        object_key=f"{tenant.id}/handbook.pdf",
    )
    source = DataSourceConnection(
        tenant_id=tenant.id, name="crm", kind="postgres", encrypted_connection_url=b"\x00cipher"
    )
    db_session.add_all([document, source])
    await db_session.flush()
    await db_session.refresh(document)
    assert document.status is DocumentStatus.PENDING
    assert document.chunk_count == 0
    assert document.size_bytes == 5 * 2**30

    await db_session.execute(text("DELETE FROM tenants WHERE id = :id"), {"id": tenant.id})
    db_session.expunge_all()
    assert (
        await db_session.scalars(select(KnowledgeDocument).filter_by(tenant_id=tenant.id))
    ).all() == []
    assert (
        await db_session.scalars(select(DataSourceConnection).filter_by(tenant_id=tenant.id))
    ).all() == []


async def test_data_source_names_are_unique_per_tenant(db_session: AsyncSession) -> None:
    first, second = await add_tenant(db_session), await add_tenant(db_session)
    for tenant in (first, second):
        db_session.add(
            DataSourceConnection(
                tenant_id=tenant.id, name="crm", kind="pg", encrypted_connection_url=b"x"
            )
        )
    await db_session.flush()
    db_session.add(
        DataSourceConnection(
            tenant_id=first.id, name="crm", kind="pg", encrypted_connection_url=b"y"
        )
    )
    with pytest.raises(IntegrityError, match="uq_data_source_connections_tenant_id_name"):
        await db_session.flush()
