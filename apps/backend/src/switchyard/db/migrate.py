"""Upgrade a database to the newest migration, one process at a time."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
ADVISORY_LOCK_KEY = 0x5357_5944  # "SWYD"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _run(connection: Connection, revision: str, downgrade: bool) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    if downgrade:
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


async def migrate(url: URL, revision: str = "head", *, downgrade: bool = False) -> None:
    """Apply migrations under a PostgreSQL advisory lock, so concurrent runs queue up."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
            await connection.commit()
            try:
                await connection.run_sync(_run, revision, downgrade)
                await connection.commit()
            finally:
                await connection.rollback()
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
                await connection.commit()
    finally:
        await engine.dispose()
    logger.info("database migrated", extra={"revision": revision, "downgrade": downgrade})
