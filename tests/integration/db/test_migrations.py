from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.db.base import Base
from switchyard.db.migrate import alembic_config, migrate, schema_state
from tests.fixtures.postgres import DatabaseFactory, tables
from tests.fixtures.processes import SWITCHYARD, switchyard_env

# The newest revision: one head, and it is the newest file in versions/.
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()

APP_TABLES = {"tenants", "data_source_connections", "knowledge_documents"}


async def current_revision(url: URL) -> str | None:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        revision = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    await engine.dispose()
    return revision


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_models_and_migrations_agree(database_url: URL) -> None:
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        differences = await connection.run_sync(_diff)
    await engine.dispose()
    assert differences == []


async def test_upgrade_downgrade_upgrade(create_database: DatabaseFactory) -> None:
    url = await create_database()
    await migrate(url)
    assert await tables(url) >= APP_TABLES
    await migrate(url, "base", downgrade=True)
    assert not APP_TABLES & await tables(url)
    assert await current_revision(url) is None
    await migrate(url)
    assert await tables(url) >= APP_TABLES
    assert await current_revision(url) == HEAD


async def test_migrate_twice_is_a_no_op(create_database: DatabaseFactory) -> None:
    url = await create_database()
    await migrate(url)
    await migrate(url)
    assert await current_revision(url) == HEAD


async def test_concurrent_migrations_wait_for_each_other(create_database: DatabaseFactory) -> None:
    url = await create_database()
    await asyncio.gather(*(migrate(url) for _ in range(4)))
    assert await current_revision(url) == HEAD


async def test_migrate_leaves_no_advisory_lock_behind(create_database: DatabaseFactory) -> None:
    url = await create_database()
    await migrate(url)
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        held = await connection.scalar(
            # This test's database only: other tests migrate theirs on the same server.
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    await engine.dispose()
    assert held == 0


def test_alembic_command_line_sees_no_pending_change(database_url: URL, repo_root: Path) -> None:
    """The developer workflow of the README: `alembic ...` with DATABASE_URL set."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), "check"],
        cwd=repo_root,
        env={**os.environ, "DATABASE_URL": database_url.render_as_string(hide_password=False)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_the_head_is_the_newest_migration_file() -> None:
    from switchyard.db.migrate import MIGRATIONS_DIR

    newest = max(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    assert HEAD == newest.split("_")[0] == "0017"


def wait_for_schema_command(url: URL, timeout: float) -> subprocess.Popen[str]:
    """`switchyard wait-for-schema`, as an init container runs it."""
    env = switchyard_env(DATABASE_URL=url.render_as_string(hide_password=False))
    return subprocess.Popen(
        [SWITCHYARD, "wait-for-schema", "--timeout", str(timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_wait_for_schema_holds_until_the_migrations_ran(
    create_database: DatabaseFactory,
) -> None:
    url = await create_database()
    # Nothing migrates it: the command gives up at its timeout, naming what it waited for.
    gave_up = wait_for_schema_command(url, 1)
    out, err = await asyncio.to_thread(gave_up.communicate, timeout=60)
    assert gave_up.returncode == 1, out + err
    assert "the database is at no revision (an empty database); this image expects " in err
    assert HEAD is not None
    assert HEAD in err
    assert "run the migrate role" in err

    # The migrate role runs while it waits: it exits 0 once the schema is at the head.
    waiting = wait_for_schema_command(url, 120)
    await asyncio.sleep(0.5)
    assert waiting.poll() is None
    await migrate(url)
    out, err = await asyncio.to_thread(waiting.communicate, timeout=120)
    assert waiting.returncode == 0, out + err
    assert out.strip() == f"schema ready: the database is at {HEAD}; this image expects {HEAD}"


async def test_wait_for_schema_lets_an_older_image_start_on_a_newer_schema(
    create_database: DatabaseFactory,
) -> None:
    url = await create_database()
    await migrate(url)
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'ffffnewer'"))
    await engine.dispose()
    state = await schema_state(url)
    assert state.unknown == {"ffffnewer"}
    assert state.ready
    ran = wait_for_schema_command(url, 5)
    out, err = await asyncio.to_thread(ran.communicate, timeout=60)
    assert ran.returncode == 0, out + err
    assert "newer than this image's" in out
