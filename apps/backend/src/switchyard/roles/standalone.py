"""The `standalone` role: the whole product from one command on embedded backends."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from pydantic import SecretStr

from switchyard.db.migrate import migrate
from switchyard.embedded.postgres import EmbeddedPostgres, EmbeddedPostgresError
from switchyard.roles.api_gateway import serve
from switchyard.roles.errors import RoleStartupError
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

DATABASE = "switchyard"


async def _create_database(postgres: EmbeddedPostgres) -> None:
    connection = await asyncpg.connect(
        host="127.0.0.1", port=postgres.port, user="postgres", database="postgres"
    )
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()


async def _prepare(postgres: EmbeddedPostgres) -> None:
    await _create_database(postgres)
    await migrate(postgres.url(DATABASE))


def _banner(settings: Settings, postgres: EmbeddedPostgres) -> str:
    base = f"http://{settings.api_host}:{settings.api_port}"
    return "\n".join(
        [
            "Switchyard standalone",
            f"  API    {base}/api/v1/  (docs {base}/docs, health {base}/health)",
            f"  data   {postgres.root}  (PostgreSQL on 127.0.0.1:{postgres.port})",
            "  stop   Ctrl-C or SIGTERM",
        ]
    )


def run(settings: Settings) -> int:
    """Server URLs in the settings are ignored: standalone always runs on embedded backends."""
    if settings.database_url is not None:
        logger.warning("standalone ignores DATABASE_URL and uses its embedded PostgreSQL")
    postgres = EmbeddedPostgres(settings.var_dir, port=settings.embedded_postgres_port)
    try:
        postgres.start()
    except EmbeddedPostgresError as exc:
        raise RoleStartupError(f"embedded PostgreSQL: {exc}") from None
    try:
        asyncio.run(_prepare(postgres))
        embedded = settings.model_copy(
            update={"database_url": SecretStr(postgres.url(DATABASE).render_as_string(False))}
        )
        print(_banner(settings, postgres), flush=True)
        serve(embedded, "standalone")
    finally:
        postgres.stop()
    return 0
