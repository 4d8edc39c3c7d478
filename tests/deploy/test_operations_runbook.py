"""docs/operations.md: the backup and restore commands it shows work as written."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg

from switchyard.db.migrate import migrate
from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.servers import unavailable

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def shell_lines(starting: tuple[str, ...]) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", RUNBOOK.read_text(), re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(starting)]


def run_as_written(backup: list[str], restore: str, cwd: Path, env: dict[str, str]) -> None:
    """The backup lines, then the restore line naming what they wrote (a dump file, or the
    directory of a parallel dump)."""
    subprocess.run(["bash", "-ec", "\n".join(backup)], cwd=cwd, env=env, check=True)
    [dump] = list(cwd.glob("switchyard-*"))
    placeholder = "switchyard-YYYYMMDD-HHMM" + (".dump" if dump.suffix == ".dump" else "")
    command = restore.replace(placeholder, dump.name)
    subprocess.run(["bash", "-ec", command], cwd=cwd, env=env, check=True)


async def test_the_documented_backup_restores_into_an_empty_database(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        unavailable("pg_dump", "the PostgreSQL client tools are not installed")
    source = await create_database()
    await migrate(source)
    plain = source.render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain.replace("+asyncpg", ""))
    await connection.execute(
        "INSERT INTO tenants (name, slug, status) VALUES ('Backed up', 'backed-up', 'active')"
    )
    await connection.close()

    export, *dumps = shell_lines(("export PGURL", "pg_dump"))
    restores = shell_lines(("pg_restore",))
    # One dump file, and the parallel dump of a large ledger (a directory): each restores.
    assert export.startswith("export PGURL"), export
    assert len(dumps) == 2, dumps
    assert len(restores) == 2, restores
    for dump, restore in zip(dumps, restores, strict=True):
        target = await create_database()
        env = {
            **os.environ,
            "DATABASE_URL": plain.replace("postgresql://", "postgresql+asyncpg://", 1)
            if "+asyncpg" not in plain
            else plain,
            "RESTORE_URL": target.render_as_string(hide_password=False).replace("+asyncpg", ""),
        }
        workdir = tmp_path / f"backup-{dumps.index(dump)}"
        workdir.mkdir()
        await asyncio.to_thread(run_as_written, [export, dump], restore, workdir, env)

        restored = await asyncpg.connect(env["RESTORE_URL"])
        try:
            names = await restored.fetch("SELECT name FROM tenants ORDER BY name")
            version = await restored.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await restored.close()
        assert "Backed up" in [row["name"] for row in names]
        assert version is not None
        await migrate(target)  # the runbook's next step: a no-op on a current dump


def test_the_runbook_covers_what_operators_ask() -> None:
    text = RUNBOOK.read_text()
    for heading in (
        "## What each health check means",
        "## Scaling workers",
        "## Running two beats",
        "## Replaying dead letters",
        "## Rotating keys",
        "## Backups",
        "## Backups of PostgreSQL by hand",
        "## Stopping gracefully",
        "## Metrics",
        "## Alerts",
        "## Logs",
        "## Error reporting",
    ):
        assert heading in text
    for check in (
        "postgres",
        "redis",
        "rabbitmq",
        "minio",
        "chroma",
        "neo4j",
        "zhipu",
        "disk",
        "memory",
    ):
        assert f"| `{check}` |" in text
    assert "switchyard rotate-data-source-keys" in text
    for setting in (
        "WORKER_SHUTDOWN_GRACE_SECONDS",
        "API_SHUTDOWN_GRACE_SECONDS",
        "METRICS_TOKEN",
        "WORKER_METRICS_PORT",
        "BEAT_METRICS_PORT",
        "SENTRY_DSN",
    ):
        assert setting in text
    assert "docker compose --profile monitoring up" in text
