"""A tenant's data as one archive: `tenants.export` writes it to the object store, under the
tenant's own prefix (`exports/<run id>.tar.gz`), for a signed, expiring download link.

The archive (gzip'd tar):

- `manifest.json`: the tenant, when, the format's version, the rows of each table and the
  objects written;
- `tables/<table>.jsonl`: one JSON object per row, for every table a tenant owns (`TABLES`),
  read in one snapshot (a REPEATABLE READ transaction), streamed from a server-side cursor;
- `objects/<key>`: the tenant's stored objects (its uploads), but not earlier exports.

What is never exported: secrets and their hashes (password hashes, the hashes of API keys',
OAuth clients', invitations' and refresh tokens' secrets, data sources' encrypted URLs),
refresh tokens and one-time links altogether, and LLM reservations (bookkeeping of calls in
flight). A table a tenant owns must be named in `TABLES` or `SKIPPED` (a test checks), so a new
table is a decision, not an accident.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

from pydantic import BaseModel
from pydantic_core import to_json
from sqlalchemy import ColumnElement, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from switchyard.db.base import Base
from switchyard.services.container import Services
from switchyard.services.objects import ObjectStore

FORMAT: Final = 1
PREFIX: Final = "exports/"
CONTENT_TYPE: Final = "application/gzip"
STREAM_ROWS: Final = 1000
CHUNK: Final = 1024 * 1024


@dataclass(frozen=True)
class Exported:
    """One table in the archive: the columns left out (secrets, their hashes)."""

    table: str
    omit: frozenset[str] = frozenset()


# Every table a tenant owns, and the two it is described by (itself, its members' users).
TABLES: Final = (
    Exported("tenants"),
    Exported("users", frozenset({"password_hash"})),
    Exported("memberships"),
    Exported("invitations", frozenset({"secret_hash", "nonce"})),
    Exported("api_keys", frozenset({"secret_hash"})),
    Exported("oauth_clients", frozenset({"secret_hash"})),
    Exported("data_source_connections", frozenset({"encrypted_connection_url"})),
    Exported("task_definitions"),
    Exported("workflow_definitions"),
    Exported("workflow_runs"),
    Exported("workflow_steps"),
    Exported("task_runs"),
    Exported("dead_letters"),
    Exported("knowledge_documents"),
    Exported("usage_counters"),
    Exported("audit_events"),
)
# Tenant-owned tables left out of an export, and why.
SKIPPED: Final = {
    "refresh_tokens": "sign-in sessions: hashes of secrets",
    "llm_reservations": "bookkeeping of LLM calls in flight",
}


def _where(table: Table, tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """The tenant's rows of `table`: its own row, its members' users, or its `tenant_id`."""
    if table.name == "tenants":
        return table.c.id == tenant_id
    if table.name == "users":
        memberships = Base.metadata.tables["memberships"]
        members = select(memberships.c.user_id).where(memberships.c.tenant_id == tenant_id)
        return table.c.id.in_(members)
    return table.c.tenant_id == tenant_id


class ExportResult(BaseModel):
    """What a finished export's run returns (GET /tenants/current/exports/{id} reads it)."""

    key: str
    size_bytes: int
    tables: dict[str, int]
    objects: int


async def write_table(
    connection: AsyncConnection, tenant_id: uuid.UUID, exported: Exported, target: IO[bytes]
) -> int:
    """The tenant's rows of one table as JSON Lines into `target`; how many."""
    table = Base.metadata.tables[exported.table]
    columns = [column for column in table.c if column.name not in exported.omit]
    statement = (
        select(*columns)
        .where(_where(table, tenant_id))
        .order_by(*table.primary_key.columns)
        .execution_options(yield_per=STREAM_ROWS)
    )
    count = 0
    result = await connection.stream(statement)
    async for rows in result.partitions():
        lines = b"".join(to_json(row._asdict(), bytes_mode="base64") + b"\n" for row in rows)
        await asyncio.to_thread(target.write, lines)
        count += len(rows)
    return count


def _add_file(archive: tarfile.TarFile, name: str, path: Path) -> None:
    info = archive.gettarinfo(str(path), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    with path.open("rb") as file:
        archive.addfile(info, file)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(datetime.now(UTC).timestamp())
    archive.addfile(info, io.BytesIO(data))


async def _download(store: ObjectStore, tenant_id: uuid.UUID, key: str, path: Path) -> None:
    _, chunks = await store.get(tenant_id, key)
    with path.open("wb") as file:
        async for chunk in chunks:
            await asyncio.to_thread(file.write, chunk)


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk


async def build(
    connection: AsyncConnection,
    store: ObjectStore,
    tenant_id: uuid.UUID,
    directory: Path,
) -> tuple[Path, dict[str, int], int]:
    """The archive of a tenant's data in `directory`: its path, the rows per table and the
    number of objects. `connection` reads every table in one snapshot."""
    tables: dict[str, int] = {}
    archive_path = directory / "export.tar.gz"
    archive = await asyncio.to_thread(tarfile.open, archive_path, "w:gz")
    try:
        for exported in TABLES:
            path = directory / f"{exported.table}.jsonl"
            with path.open("wb") as target:
                tables[exported.table] = await write_table(connection, tenant_id, exported, target)
            await asyncio.to_thread(_add_file, archive, f"tables/{exported.table}.jsonl", path)
            path.unlink()
        objects = [info for info in await store.list(tenant_id) if not info.key.startswith(PREFIX)]
        for info in objects:
            path = directory / "object"
            await _download(store, tenant_id, info.key, path)
            await asyncio.to_thread(_add_file, archive, f"objects/{info.key}", path)
            path.unlink()
        manifest = {
            "format": FORMAT,
            "tenant_id": str(tenant_id),
            "created_at": datetime.now(UTC).isoformat(),
            "tables": tables,
            "objects": len(objects),
            "omitted": {e.table: sorted(e.omit) for e in TABLES if e.omit}
            | {name: ["*"] for name in SKIPPED},
        }
        await asyncio.to_thread(
            _add_bytes, archive, "manifest.json", json.dumps(manifest, indent=2).encode()
        )
    finally:
        await asyncio.to_thread(archive.close)
    return archive_path, tables, len(objects)


async def export(services: Services, tenant_id: uuid.UUID, export_id: uuid.UUID) -> ExportResult:
    """Write the tenant's archive to `exports/<export_id>.tar.gz` in its prefix; earlier
    exports of the tenant go once this one is stored (one archive kept at a time)."""
    store = services.objects
    key = f"{PREFIX}{export_id}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="switchyard-export-") as scratch:
        async with services.database_engine.connect() as connection:
            await connection.execution_options(isolation_level="REPEATABLE READ")
            await connection.begin()
            path, tables, objects = await build(connection, store, tenant_id, Path(scratch))
        size = os.path.getsize(path)  # noqa: ASYNC240 - one stat
        await store.put(tenant_id, key, _read(path), length=size, content_type=CONTENT_TYPE)
    for info in await store.list(tenant_id, PREFIX):
        if info.key != key:
            await store.delete(tenant_id, info.key)
    return ExportResult(key=key, size_bytes=size, tables=tables, objects=objects)
