"""Backups on the real PostgreSQL: data written through the product (an account, a run, an
object, vectors), backed up by the backup role, destroyed, restored by `switchyard restore`,
equal; a corrupted archive is refused loudly and changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tarfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.api.app import create_app
from switchyard.db.migrate import migrate
from switchyard.platform import backup
from switchyard.services.objects import create_object_store
from switchyard.services.vectors import VectorChunk, VectorStore
from switchyard.settings import Settings
from tests.fixtures.accounts import sign_up
from tests.fixtures.backing import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.processes import SWITCHYARD, switchyard_env

CONTENT = b"the quarterly report\n" * 100


def command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The `switchyard` command with the settings' database, VAR_DIR and BACKUP_DIR."""
    assert settings.database_url is not None
    env = switchyard_env(
        DATABASE_URL=settings.database_url.get_secret_value(),
        VAR_DIR=str(settings.var_dir),
        BACKUP_DIR=str(settings.backup_path),
        ENVIRONMENT="test",
        CHROMA_HOST="",  # the embedded vectors under VAR_DIR, as the test's own store
    )
    return subprocess.run(
        [SWITCHYARD, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


async def execute(url: URL, statement: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text(statement))
    await engine.dispose()


@pytest.fixture
async def deployment(
    create_database: DatabaseFactory, make_settings: SettingsFactory, tmp_path: Path
) -> Settings:
    """A deployment of its own: a database, objects and vectors under its VAR_DIR."""
    url = await create_database()
    await migrate(url)
    return make_settings(
        database_url=url.render_as_string(hide_password=False), var_dir=tmp_path / "var"
    )


async def test_back_up_destroy_restore_and_everything_is_back(deployment: Settings) -> None:
    settings = deployment
    assert settings.database is not None
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        accepted = await client.post(
            "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "kept"}}
        )
    assert accepted.status_code in (202, 503), accepted.text  # no broker: stored, not published
    objects, vectors = create_object_store(settings), VectorStore.from_settings(settings)
    await objects.put(account.tenant_id, "reports/q3.txt", CONTENT)
    document = uuid.uuid4()
    await vectors.upsert(
        account.tenant_id,
        [VectorChunk(f"{document}:0", document, "a chunk", [0.25, 0.5, 0.75], {"page": 1})],
    )
    before = await backup.table_counts(settings.database)
    assert before["tenants"] >= 2  # the platform's and the account's
    assert before["users"] >= 1

    # The backup role, once: one archive, verified, holding what was written.
    made = command(settings, "run", "backup")
    assert made.returncode == 0, made.stderr[-3000:]
    [name] = command(settings, "backups").stdout.split()
    assert backup.NAME.match(name)
    with tarfile.open(settings.backup_path / name) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        members = set(archive.getnames())
    assert manifest["databases"]["main"]["tables"] == before
    assert manifest["objects"] == 1
    assert manifest["vectors"]["records"] == 1
    assert f"objects/{account.tenant_id}/reports/q3.txt" in members
    assert "postgres/main.dump" in members
    logged = [json.loads(line) for line in made.stderr.splitlines() if line.startswith("{")]
    [done] = [line for line in logged if line["message"] == "backup made"]
    assert done["verified"] is True

    # Destroyed: every row of the account, its object, its vectors.
    await execute(settings.database, "TRUNCATE tenants, users CASCADE")
    await objects.delete(account.tenant_id, "reports/q3.txt")
    await vectors.drop_every_space(account.tenant_id)
    await vectors.close()
    assert (await backup.table_counts(settings.database))["tenants"] == 0

    restored = command(settings, "restore", name, "--yes")
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert restored.stdout.startswith(f"restored {name} (made ")
    assert await backup.table_counts(settings.database) == before
    info, chunks = await objects.get(account.tenant_id, "reports/q3.txt")
    assert b"".join([chunk async for chunk in chunks]) == CONTENT
    assert info.size == len(CONTENT)
    vectors = VectorStore.from_settings(settings)
    [match] = await vectors.query(account.tenant_id, [0.25, 0.5, 0.75], top_k=1)
    assert (match.id, match.text, match.metadata.get("page")) == (f"{document}:0", "a chunk", 1)
    await vectors.close()
    await objects.close()


async def test_a_corrupted_archive_is_refused_loudly_and_changes_nothing(
    deployment: Settings,
) -> None:
    settings = deployment
    assert settings.database is not None
    made = command(settings, "run", "backup")
    assert made.returncode == 0, made.stderr[-3000:]
    [name] = command(settings, "backups").stdout.split()
    path = settings.backup_path / name
    with tarfile.open(path) as archive:
        dump = archive.getmember("postgres/main.dump")
    # One byte of the dump flipped, inside the archive.
    data = bytearray(path.read_bytes())
    data[dump.offset_data + dump.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    await execute(settings.database, "CREATE TABLE marker (id int)")

    refused = command(settings, "restore", name, "--yes")
    assert refused.returncode == 1
    assert "nothing was restored: postgres/main.dump is corrupt" in refused.stderr
    assert "marker" in await backup.table_counts(settings.database)

    # Verification reads every member: the same archive fails it in process too.
    objects, vectors = create_object_store(settings), VectorStore.from_settings(settings)
    backups = backup.Backups(settings, objects, vectors)
    with pytest.raises(backup.BackupError, match=r"main\.dump is corrupt"):
        await backups.verify(path, path.parent / "check")


async def test_a_dump_that_restores_to_other_rows_fails_verification(
    deployment: Settings, tmp_path: Path
) -> None:
    """The row counts are checked, not only the checksums: an archive whose manifest (and
    checksums) were rewritten to claim a row that the dump does not hold is refused."""
    settings = deployment
    objects, vectors = create_object_store(settings), VectorStore.from_settings(settings)
    backups = backup.Backups(settings, objects, vectors)
    tar, made = await backups.make(tmp_path / "work")
    assert made.databases["main"]["tenants"] >= 1
    members = tmp_path / "work" / "members"
    manifest = json.loads((members / "manifest.json").read_text())
    manifest["databases"]["main"]["tables"]["tenants"] += 1
    (members / "manifest.json").write_text(json.dumps(manifest))
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as archive:
        for path in sorted(members.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(members)), recursive=False)
    with pytest.raises(
        backup.BackupError, match=r"main restored with other row counts: \['tenants'\]"
    ):
        await backups.verify(forged, tmp_path / "verify")
    await backups.verify(tar, tmp_path / "verify-original")  # the original passes


def test_retention_keeps_the_newest_by_count_and_age() -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    names = [
        f"{backup.PREFIX}{now - timedelta(days=days):%Y%m%dT%H%M%SZ}.tar"
        for days in (40, 35, 10, 3, 2, 1, 0)
    ]
    # Keep 5: the two oldest go; keep 30 days: the 40- and 35-day-old go anyway.
    assert backup.to_prune(names, keep=5, keep_days=30, now=now) == names[:2]
    assert backup.to_prune(names, keep=3, keep_days=30, now=now) == names[:4]
    assert backup.to_prune(names, keep=10, keep_days=5, now=now) == names[:3]
    # The newest stays, however old.
    assert backup.to_prune(names[:1], keep=1, keep_days=1, now=now) == []
    assert backup.to_prune([], keep=1, keep_days=1, now=now) == []


def test_a_bad_schedule_is_a_configuration_error(deployment: Settings) -> None:
    assert deployment.database_url is not None
    env = switchyard_env(
        DATABASE_URL=deployment.database_url.get_secret_value(),
        VAR_DIR=str(deployment.var_dir),
        BACKUP_SCHEDULE="every night",
    )
    ran = subprocess.run(
        [SWITCHYARD, "run", "backup"], env=env, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 78
    assert "BACKUP_SCHEDULE: 'every night' is not a cron line of five fields" in ran.stderr


async def test_the_restore_command_asks_before_replacing(deployment: Settings) -> None:
    refused = await asyncio.to_thread(command, deployment, "restore", "whatever.tar")
    assert refused.returncode == 2
    assert "add --yes" in refused.stderr


async def test_archives_kept_in_a_bucket_of_their_own(
    make_settings: SettingsFactory, s3_endpoint: str, tmp_path: Path
) -> None:
    """BACKUP_BUCKET: the archives go to the object store's endpoint (the S3 stand-in here),
    listed, fetched and pruned there; the product's own bucket is left alone."""
    settings = make_settings(
        minio_endpoint=s3_endpoint,
        minio_access_key=S3_ACCESS_KEY,
        minio_secret_key=S3_SECRET_KEY,
        backup_bucket=f"backups-{uuid.uuid4().hex[:8]}",
    )
    target = backup.Target(settings)
    assert target.location == f"s3://{settings.backup_bucket}"
    assert await asyncio.to_thread(target.names) == []
    names = [f"{backup.PREFIX}2026120{day}T030000Z.tar" for day in (5, 6, 7)]
    for day, name in enumerate(names):
        archive = tmp_path / name
        archive.write_bytes(b"archive of day %d" % day)
        await asyncio.to_thread(target.put, archive)
    (tmp_path / "fetched").mkdir()
    assert await asyncio.to_thread(target.names) == names
    fetched = await asyncio.to_thread(target.fetch, names[1], tmp_path / "fetched")
    assert fetched.read_bytes() == b"archive of day 1"
    await asyncio.to_thread(target.remove, names[0])
    assert await asyncio.to_thread(target.names) == names[1:]
    with pytest.raises(backup.BackupError, match="is not a backup's name"):
        await asyncio.to_thread(target.fetch, "../../etc/passwd", tmp_path)


@pytest.mark.parametrize("filtered", [True, False], ids=["data-filter", "checked-by-hand"])
def test_an_archive_with_a_member_outside_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filtered: bool
) -> None:
    """Unpacking never writes outside its folder: with tarfile's data filter (Python 3.11.4+)
    or, before it, every member checked by hand."""
    if not filtered:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        payload = tmp_path / "payload"
        payload.write_text("{}")
        archive.add(payload, arcname="manifest.json")
        archive.add(payload, arcname="../escaped.txt")
    with pytest.raises(backup.BackupError):
        backup.Archive.unpack(evil, tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()
