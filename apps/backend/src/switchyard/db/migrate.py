"""Upgrade a database to the newest migration, one process at a time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
ADVISORY_LOCK_KEY = 0x5357_5944  # "SWYD"
LOCK_POLL_SECONDS = 0.2


def alembic_config(version_locations: Sequence[Path] = ()) -> Config:
    """The product's migrations, plus the branches of domains that keep their own
    (`version_locations`, from `switchyard.domains`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if version_locations:
        config.set_main_option("path_separator", "os")
        locations = [MIGRATIONS_DIR / "versions", *version_locations]
        config.set_main_option("version_locations", os.pathsep.join(map(str, locations)))
    return config


def run_alembic(config: Config, connection: Connection, revision: str, downgrade: bool) -> None:
    """Upgrade (or downgrade) to `revision` on `connection` (the env.py of every migration
    directory here runs on the connection it is handed)."""
    config.attributes["connection"] = connection
    if downgrade:
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


def _run(
    connection: Connection, revision: str, downgrade: bool, version_locations: Sequence[Path]
) -> None:
    run_alembic(alembic_config(version_locations), connection, revision, downgrade)


async def _take_lock(connection: AsyncConnection) -> None:
    """Wait for the migration lock without a transaction open while waiting: a migration that
    builds an index CONCURRENTLY waits for every transaction older than its own, and a waiter
    blocked inside one would wait for it in turn (a deadlock)."""
    while True:
        won = await connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        )
        await connection.commit()
        if won:
            return
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def migrate(
    url: URL,
    revision: str = "heads",
    *,
    downgrade: bool = False,
    version_locations: Sequence[Path] = (),
) -> None:
    """Apply migrations under a PostgreSQL advisory lock, so concurrent runs queue up; by
    default every branch to its head."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await _take_lock(connection)
            try:
                await connection.run_sync(_run, revision, downgrade, version_locations)
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
