"""Alembic environment: runs on the connection handed in by `switchyard.db.migrate`,
or, for the `alembic` command line, on DATABASE_URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.db.base import Base
from switchyard.db.models import Tenant  # noqa: F401  (registers every model)
from switchyard.settings import get_settings

target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    url = get_settings().database
    if url is None:
        raise SystemExit("DATABASE_URL is not set")
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(run_on)
        await connection.commit()
    await engine.dispose()


handed_in = context.config.attributes.get("connection")
if handed_in is not None:
    run_on(handed_in)
else:
    asyncio.run(run_from_settings())
