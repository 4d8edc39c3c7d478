"""PostgreSQL: the async engine, its session factory and its health probe."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from switchyard.settings import Settings


def pool_options(settings: Settings) -> dict[str, Any]:
    """Pool size, overflow, wait, pre-ping and recycle: the same for every database engine."""
    return {
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
        "pool_timeout": settings.database_pool_timeout_seconds,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
    }


def create_engine(settings: Settings, url: URL, application_name: str) -> AsyncEngine:
    """An engine with the pool, pre-ping and timeouts taken from settings."""
    return create_async_engine(
        url,
        **pool_options(settings),
        connect_args={
            "timeout": settings.database_connect_timeout_seconds,
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(settings.database_statement_timeout_ms),
            },
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def probe(engine: AsyncEngine) -> None:
    """Raise unless the database answers a trivial query."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
