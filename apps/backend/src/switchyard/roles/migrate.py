"""The `migrate` role: upgrade the database, bootstrap the platform superuser, exit 0."""

from __future__ import annotations

import asyncio
import re

from alembic.util.exc import CommandError
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from switchyard.auth.service import ensure_superuser
from switchyard.db.binds import migrate_bind
from switchyard.db.migrate import migrate
from switchyard.documents.graph import KnowledgeGraph
from switchyard.domains import load_domains, version_locations
from switchyard.errors import RoleConfigurationError
from switchyard.services.neo4j import create_neo4j
from switchyard.settings import Settings

# Alembic's words for a revision in the database that none of its scripts has.
UNKNOWN_REVISION = re.compile(r"Can't locate revision identified by '(?P<revision>[^']+)'")


async def prepare_database(settings: Settings, url: URL) -> None:
    """Main database, then every bind, then the graph's constraints; then the superuser."""
    try:
        await migrate(
            url, version_locations=version_locations(load_domains(settings.domain_packages))
        )
    except CommandError as exc:
        unknown = UNKNOWN_REVISION.search(str(exc))
        if unknown is None:
            raise
        raise RoleConfigurationError(
            f"DOMAIN_PACKAGES: the database has revision {unknown['revision']}, which no "
            "migration here knows: a domain package that migrated this database is missing "
            f"from DOMAIN_PACKAGES ({','.join(settings.domain_packages) or 'none'}); add it "
            "back (a removed domain's tables stay until its own downgrade removes them)"
        ) from None
    for name, bind_url in settings.database_binds.items():
        await migrate_bind(name, bind_url.get_secret_value())
    neo4j = create_neo4j(settings)
    if neo4j is not None:
        graph = KnowledgeGraph(neo4j)
        try:
            await graph.ensure_constraints()
        finally:
            await neo4j.close()
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
