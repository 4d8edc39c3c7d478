"""The `migrate` role: upgrade the database, bootstrap the platform superuser, exit 0."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from switchyard.auth.service import ensure_superuser
from switchyard.db.binds import migrate_bind
from switchyard.db.migrate import migrate
from switchyard.roles.errors import RoleConfigurationError
from switchyard.services.graph import create_graph
from switchyard.settings import Settings


async def prepare_database(settings: Settings, url: URL) -> None:
    """Main database, then every bind, then the graph's constraints; then the superuser."""
    await migrate(url)
    for name, bind_url in settings.database_binds.items():
        await migrate_bind(name, bind_url.get_secret_value())
    graph = create_graph(settings)
    if graph is not None:
        try:
            await graph.ensure_constraints()
        finally:
            await graph.close()
    engine = create_async_engine(url, pool_size=1, max_overflow=0, hide_parameters=True)
    try:
        async with async_sessionmaker(engine).begin() as session:
            await ensure_superuser(session, settings)
    finally:
        await engine.dispose()


def run(settings: Settings) -> int:
    url = settings.database
    if url is None:
        raise RoleConfigurationError("DATABASE_URL: required by the migrate role")
    asyncio.run(prepare_database(settings, url))
    return 0
