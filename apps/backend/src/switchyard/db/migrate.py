"""Upgrade a database to the newest migration, one process at a time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

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


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against the migrations this image carries."""

    current: frozenset[str]  # the revisions the database is at
    heads: frozenset[str]  # the newest revision of each branch here
    unknown: frozenset[str]  # current revisions no migration here knows (a newer image's)

    @property
    def ready(self) -> bool:
        """At this image's heads, or past them (a newer image migrated: expand-only
        migrations keep the older code working)."""
        return self.current == self.heads or bool(self.unknown)

    def describe(self) -> str:
        at = ", ".join(sorted(self.current)) or "no revision (an empty database)"
        heads = ", ".join(sorted(self.heads))
        if self.unknown:
            return f"the database is at {at}, newer than this image's {heads}"
        return f"the database is at {at}; this image expects {heads}"


def _state(connection: Connection, version_locations: Sequence[Path]) -> SchemaState:
    scripts = ScriptDirectory.from_config(alembic_config(version_locations))
    current = frozenset(MigrationContext.configure(connection).get_current_heads())
    known = {revision.revision for revision in scripts.walk_revisions()}
    return SchemaState(current, frozenset(scripts.get_heads()), current - known)


async def schema_state(url: URL, version_locations: Sequence[Path] = ()) -> SchemaState:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_state, version_locations)
    finally:
        await engine.dispose()


async def wait_for_schema(
    url: URL,
    within: float,
    version_locations: Sequence[Path] = (),
    poll_seconds: float = 2.0,
) -> SchemaState:
    """Poll until the database is at this image's heads (or past them); the last state,
    ready or not, once `within` seconds have passed. A database that cannot be reached yet
    is waited for too (its error raised at the deadline)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            state = await schema_state(url, version_locations)
        except (OSError, DBAPIError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            logger.info("database not reachable yet", extra={"error": repr(exc)})
        else:
            if state.ready or asyncio.get_running_loop().time() >= deadline:
                return state
            logger.info("waiting for the migrations: %s", state.describe())
        await asyncio.sleep(poll_seconds)
