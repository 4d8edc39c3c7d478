"""Extra database binds against the local MariaDB: own engine, sessions and migrations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.db.binds import (
    AnalyticsBase,
    BindUnavailableError,
    async_url,
    create_binds,
    has_migrations,
    migrate_bind,
)
from switchyard.db.binds.models import UsageEvent
from switchyard.roles.migrate import prepare_database
from switchyard.settings import Settings
from tests.fixtures.servers import port_open, unavailable

MARIADB = "mysql://root@127.0.0.1:3306"


@pytest.fixture
async def mariadb_url() -> AsyncIterator[str]:
    """A fresh, empty MariaDB database for one test, dropped after it."""
    if not port_open("127.0.0.1", 3306):
        unavailable("MariaDB", "nothing listens on 127.0.0.1:3306")
    name = f"switchyard_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(async_url(f"{MARIADB}/test"))
    async with admin.connect() as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"{MARIADB}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.dispose()


async def test_bind_migrates_from_its_own_version_table(mariadb_url: str) -> None:
    assert await migrate_bind("analytics", mariadb_url)
    assert await migrate_bind("analytics", mariadb_url)  # idempotent
    engine = create_async_engine(async_url(mariadb_url))
    async with engine.connect() as connection:
        tables = set((await connection.execute(text("SHOW TABLES"))).scalars())
        version = await connection.scalar(text("SELECT version_num FROM alembic_version_analytics"))
    assert tables == {"usage_events", "usage_counters", "alembic_version_analytics"}
    assert version == "analytics_0002"

    await migrate_bind("analytics", mariadb_url, "base", downgrade=True)
    async with engine.connect() as connection:
        tables = set((await connection.execute(text("SHOW TABLES"))).scalars())
    assert tables == {"alembic_version_analytics"}
    await engine.dispose()


async def test_models_write_and_read_through_their_bind(mariadb_url: str) -> None:
    await migrate_bind("analytics", mariadb_url)
    settings = Settings(database_binds={"analytics": mariadb_url})
    binds = create_binds(settings, "test")
    bind = binds["analytics"]
    assert bind.dialect == "mysql"
    assert UsageEvent.__bind_key__ == "analytics"
    assert UsageEvent.metadata is AnalyticsBase.metadata
    await bind.probe()

    tenant = uuid.uuid4()
    async with bind.sessions.begin() as session:
        session.add_all(
            [
                UsageEvent(tenant_id=tenant, kind="llm_tokens", name="glm-4-flash", quantity=120),
                UsageEvent(tenant_id=tenant, kind="llm_tokens", name="glm-4-flash", quantity=30),
                UsageEvent(tenant_id=uuid.uuid4(), kind="llm_tokens", name="x", quantity=7),
            ]
        )
    async with bind.sessions() as session:
        total = await session.scalar(
            select(func.sum(UsageEvent.quantity)).where(UsageEvent.tenant_id == tenant)
        )
        stamps = (await session.scalars(select(UsageEvent.occurred_at))).all()
    assert total == 150
    assert len(stamps) == 3
    assert all(stamp is not None for stamp in stamps)
    await bind.engine.dispose()


async def test_a_bind_without_migrations_still_gets_an_engine(mariadb_url: str) -> None:
    settings = Settings(database_binds={"reporting": mariadb_url})
    assert not has_migrations("reporting")
    assert not await migrate_bind("reporting", mariadb_url)
    binds = create_binds(settings, "test")
    await binds["reporting"].probe()
    await binds["reporting"].engine.dispose()


def test_bind_settings_are_checked() -> None:
    assert async_url("mysql://u:p@h/db").drivername == "mysql+asyncmy"
    assert async_url("mariadb://u:p@h/db").drivername == "mariadb+asyncmy"
    assert async_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="unsupported database"):
        async_url("sqlite:///x.db")
    with pytest.raises(ValueError, match="bind name"):
        Settings(database_binds={"Bad-Name": "mysql://h/db"})
    with pytest.raises(ValueError, match="not a valid database URL"):
        Settings(database_binds={"analytics": "::nonsense"})
    error = BindUnavailableError("analytics")
    assert error.status == 503
    assert "DATABASE_BINDS" in error.detail


def test_binds_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_BINDS", '{"analytics": "mysql://root:s3cret@db/analytics"}')
    settings = Settings()
    assert settings.database_binds["analytics"].get_secret_value().endswith("@db/analytics")
    assert "mysql://root:s3cret@db/analytics" in settings.secret_values()
    assert "s3cret" not in repr(settings)


async def test_the_migrate_role_migrates_every_bind(mariadb_url: str, database_url: URL) -> None:
    settings = Settings(database_binds={"analytics": mariadb_url})
    await prepare_database(settings, database_url)
    engine = create_async_engine(async_url(mariadb_url))
    async with engine.connect() as connection:
        version = await connection.scalar(text("SELECT version_num FROM alembic_version_analytics"))
    await engine.dispose()
    assert version == "analytics_0002"
