"""Extra named databases (DATABASE_BINDS): each its own engine, session factory and migrations.

A model lives in a bind by deriving from that bind's declarative base (`AnalyticsBase` for
the `analytics` bind); the base names its bind in `__bind_key__`. A bind's migrations live
in `migrations/<name>/` and are recorded in that database's `alembic_version_<name>` table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from sqlalchemy import Connection, MetaData, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from switchyard.db import engine as postgres
from switchyard.db.base import NAMING_CONVENTION
from switchyard.errors import ServiceUnavailableError
from switchyard.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
ASYNC_DRIVERS: Final = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}
LOCK_TIMEOUT_SECONDS: Final = 120
PG_LOCK_KEY: Final = 0x5357_5942  # "SWYB"


class AnalyticsBase(DeclarativeBase):
    """Models stored in the `analytics` bind (MySQL/MariaDB or PostgreSQL)."""

    __bind_key__: ClassVar[str] = "analytics"
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


BIND_BASES: Final[dict[str, type[DeclarativeBase]]] = {"analytics": AnalyticsBase}


class BindUnavailableError(ServiceUnavailableError):
    code = "bind_disabled"

    def __init__(self, name: str) -> None:
        super().__init__(f"This feature needs the {name!r} database; add it to DATABASE_BINDS.")


def async_url(raw: str) -> URL:
    """The URL with the async driver of its dialect (mysql:// becomes mysql+asyncmy://)."""
    url = make_url(raw)
    dialect = url.drivername.split("+")[0]
    if dialect not in ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {dialect!r}: use PostgreSQL, MySQL or MariaDB")
    return url.set(drivername=ASYNC_DRIVERS[dialect])


@dataclass
class Bind:
    name: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def probe(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))


def create_bind(settings: Settings, name: str, raw_url: str, application: str) -> Bind:
    """The same pool settings as the main database; PostgreSQL binds use its engine factory."""
    url = async_url(raw_url)
    if url.drivername.startswith("postgresql"):
        engine = postgres.create_engine(settings, url, application)
    else:
        engine = postgres.ping_when_idle(
            create_async_engine(
                url,
                **postgres.pool_options(settings),
                connect_args={
                    "connect_timeout": int(max(1, settings.database_connect_timeout_seconds))
                },
            ),
            settings.database_ping_after_idle_seconds,
        )
    return Bind(name, engine, async_sessionmaker(engine, expire_on_commit=False))


def create_binds(settings: Settings, application: str) -> dict[str, Bind]:
    return {
        name: create_bind(settings, name, url.get_secret_value(), application)
        for name, url in settings.database_binds.items()
    }


def alembic_config(name: str) -> Config:
    from alembic.config import Config  # only `migrate` needs Alembic

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / name))
    config.attributes["bind"] = name
    return config


def has_migrations(name: str) -> bool:
    return name in BIND_BASES and (MIGRATIONS_DIR / name).is_dir()


def _run(connection: Connection, name: str, revision: str, downgrade: bool) -> None:
    from switchyard.db.migrate import run_alembic  # only `migrate` needs Alembic

    run_alembic(alembic_config(name), connection, revision, downgrade)


async def migrate_bind(
    name: str, raw_url: str, revision: str = "head", *, downgrade: bool = False
) -> bool:
    """Upgrade one bind under a lock of its own database; False when it has no migrations."""
    if not has_migrations(name):
        logger.info("bind has no migrations", extra={"bind": name})
        return False
    engine = create_async_engine(async_url(raw_url), pool_size=1, max_overflow=0)
    lock = f"switchyard-migrate-{name}"
    try:
        async with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            else:
                got = await connection.scalar(
                    text("SELECT GET_LOCK(:name, :timeout)"),
                    {"name": lock, "timeout": LOCK_TIMEOUT_SECONDS},
                )
                if got != 1:
                    raise TimeoutError(f"another process holds the migration lock of {name!r}")
            await connection.commit()
            try:
                await connection.run_sync(_run, name, revision, downgrade)
                await connection.commit()
            finally:
                await connection.rollback()
                if postgres:
                    await connection.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY}
                    )
                else:
                    await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": lock})
                await connection.commit()
    finally:
        await engine.dispose()
    logger.info("bind migrated", extra={"bind": name, "revision": revision})
    return True


__all__ = [
    "BIND_BASES",
    "AnalyticsBase",
    "Bind",
    "BindUnavailableError",
    "async_url",
    "create_binds",
    "migrate_bind",
]
