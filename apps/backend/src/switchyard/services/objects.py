"""Object storage: MinIO (or any S3) through the official SDK, or a directory for standalone.

Every key lives under `tenants/{tenant_id}/`: callers pass the tenant id of the principal
(a UUID, never text from a request) and a relative key whose segments are checked, so a key
cannot climb out of its tenant's prefix in either store.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import io
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol, cast
from urllib.parse import urlencode

from switchyard.errors import NotFoundError, SwitchyardError

if TYPE_CHECKING:
    from minio import Minio

    from switchyard.settings import Settings

MAX_KEY_LENGTH: Final = 512
CHUNK_SIZE: Final = 64 * 1024
# S3's smallest multipart part: an upload of unknown length holds one part in memory.
PART_SIZE: Final = 5 * 1024 * 1024
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


class InvalidKeyError(SwitchyardError):
    status = 422
    code = "invalid_object_key"
    title = "Invalid object key"


class ObjectTooLargeError(SwitchyardError):
    status = 413
    code = "payload_too_large"
    title = "Content Too Large"


class SizeMismatchError(SwitchyardError):
    code = "size_mismatch"
    title = "Size mismatch"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    etag: str | None
    last_modified: datetime | None


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a UUID taken from the principal")
    return f"tenants/{tenant_id}/"


def check_key(key: str) -> str:
    """A relative key of `/`-separated segments of letters, digits, `.`, `_` and `-`.

    A segment may not start with `.`, so `.` and `..` cannot occur; there are no empty
    segments, so no leading `/` or `//`.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"an object key has 1 to {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKeyError(
                f"object key segment {segment!r} must be letters, digits, '.', '_' or '-' "
                "and may not start with '.'"
            )
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: a key, possibly ending in `/`, or empty for everything."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


def full_key(tenant_id: uuid.UUID, key: str) -> str:
    return tenant_prefix(tenant_id) + check_key(key)


class ObjectStore(Protocol):
    """What both stores offer; `key` is always relative to the tenant's prefix."""

    kind: str

    async def ensure_bucket(self) -> None: ...

    async def put(
        self,
        tenant_id: uuid.UUID,
        key: str,
        data: bytes | AsyncIterable[bytes],
        *,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> ObjectInfo: ...

    async def get(self, tenant_id: uuid.UUID, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """The object's description and its content, read chunk by chunk."""
        ...

    async def stat(self, tenant_id: uuid.UUID, key: str) -> ObjectInfo: ...

    async def delete(self, tenant_id: uuid.UUID, key: str) -> None: ...

    async def list(self, tenant_id: uuid.UUID, prefix: str = "") -> builtins.list[ObjectInfo]: ...

    async def presigned_get(
        self, tenant_id: uuid.UUID, key: str, expires: timedelta | None = None
    ) -> str: ...

    async def probe(self) -> None: ...

    async def close(self) -> None: ...


async def _chunks(data: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])
        return
    async for chunk in data:
        if chunk:
            yield chunk


class _Meter:
    """Counts bytes as they pass and stops at the limit or at a declared length."""

    def __init__(self, length: int | None, max_bytes: int | None) -> None:
        self.length = length
        self.max_bytes = max_bytes
        self.seen = 0
        if length is not None and max_bytes is not None and length > max_bytes:
            raise ObjectTooLargeError(f"the object is {length} bytes; the limit is {max_bytes}")

    def add(self, size: int) -> None:
        self.seen += size
        if self.max_bytes is not None and self.seen > self.max_bytes:
            raise ObjectTooLargeError(f"the object is over the limit of {self.max_bytes} bytes")
        if self.length is not None and self.seen > self.length:
            raise SizeMismatchError(f"more than the declared {self.length} bytes arrived")

    def finish(self) -> None:
        if self.length is not None and self.seen != self.length:
            raise SizeMismatchError(f"{self.seen} bytes arrived; {self.length} were declared")


class _BlockingReader(io.RawIOBase):
    """A file-like view of an async byte stream, read from a worker thread.

    The SDK reads in a thread; each read asks the event loop for the next chunk.
    """

    def __init__(
        self, chunks: AsyncIterator[bytes], meter: _Meter, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._chunks = chunks
        self._meter = meter
        self._loop = loop
        self._buffer = b""
        self._done = False

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return None
        self._meter.add(len(chunk))
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        wanted = size if size is not None and size >= 0 else None
        while not self._done and (wanted is None or len(self._buffer) < wanted):
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if chunk is None:
                self._done = True
                self._meter.finish()
            else:
                self._buffer += chunk
        if wanted is None:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
        return out


def _sign(secret: bytes, key: str, expires_at: int) -> str:
    message = f"{key}\n{expires_at}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class LocalObjectStore:
    """Objects as files under a directory: `data/` holds content, `meta/` a JSON description.

    Writes go to a temporary file that replaces the target only when complete, so a
    failed or oversized upload leaves nothing behind.
    """

    kind = "local"

    def __init__(self, root: Path, *, url_base: str, signing_secret: bytes) -> None:
        self.root = root
        self.url_base = url_base.rstrip("/")
        self._secret = hashlib.sha256(b"switchyard-object-url\n" + signing_secret).digest()

    def _paths(self, full: str) -> tuple[Path, Path]:
        return self.root / "data" / full, self.root / "meta" / f"{full}.json"

    async def ensure_bucket(self) -> None:
        await asyncio.to_thread(self._ensure)

    def _ensure(self) -> None:
        for part in ("data", "meta", "tmp"):
            (self.root / part).mkdir(parents=True, exist_ok=True)

    async def put(
        self,
        tenant_id: uuid.UUID,
        key: str,
        data: bytes | AsyncIterable[bytes],
        *,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> ObjectInfo:
        full = full_key(tenant_id, key)
        meter = _Meter(length, max_bytes)
        await self.ensure_bucket()
        handle, temporary = tempfile.mkstemp(dir=self.root / "tmp")
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(handle, "wb") as file:
                async for chunk in _chunks(data):
                    meter.add(len(chunk))
                    digest.update(chunk)
                    await asyncio.to_thread(file.write, chunk)
            meter.finish()
            info = ObjectInfo(
                key=key,
                size=meter.seen,
                content_type=content_type,
                etag=digest.hexdigest(),
                last_modified=datetime.now(UTC),
            )
            await asyncio.to_thread(self._commit, full, Path(temporary), info)
        except BaseException:
            os.unlink(temporary)
            raise
        return info

    def _commit(self, full: str, temporary: Path, info: ObjectInfo) -> None:
        data_path, meta_path = self._paths(full)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "content_type": info.content_type,
            "etag": info.etag,
            "last_modified": info.last_modified.isoformat() if info.last_modified else None,
        }
        meta_path.write_text(json.dumps(meta))
        os.replace(temporary, data_path)

    def info_of(self, full: str, key: str) -> ObjectInfo:
        data_path, meta_path = self._paths(full)
        try:
            size = data_path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"object {key!r} does not exist") from None
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        modified = meta.get("last_modified")
        return ObjectInfo(
            key=key,
            size=size,
            content_type=meta.get("content_type") or DEFAULT_CONTENT_TYPE,
            etag=meta.get("etag"),
            last_modified=datetime.fromisoformat(modified) if modified else None,
        )

    async def stat(self, tenant_id: uuid.UUID, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self.info_of, full_key(tenant_id, key), key)

    async def get(self, tenant_id: uuid.UUID, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        full = full_key(tenant_id, key)
        info = await asyncio.to_thread(self.info_of, full, key)
        file = await asyncio.to_thread(self._paths(full)[0].open, "rb")
        return info, self._stream(file)

    async def _stream(self, file: io.BufferedReader) -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
                yield chunk
        finally:
            file.close()

    async def delete(self, tenant_id: uuid.UUID, key: str) -> None:
        await asyncio.to_thread(self._delete, full_key(tenant_id, key))

    def _delete(self, full: str) -> None:
        for path in self._paths(full):
            path.unlink(missing_ok=True)

    async def list(self, tenant_id: uuid.UUID, prefix: str = "") -> builtins.list[ObjectInfo]:
        base = tenant_prefix(tenant_id)
        check_prefix(prefix)
        return await asyncio.to_thread(self._list, base, prefix)

    def _list(self, base: str, prefix: str) -> builtins.list[ObjectInfo]:
        tenant_root = self.root / "data" / base
        if not tenant_root.is_dir():
            return []
        found = []
        for path in sorted(tenant_root.rglob("*")):
            if path.is_file():
                key = path.relative_to(tenant_root).as_posix()
                if key.startswith(prefix):
                    found.append(self.info_of(base + key, key))
        return found

    async def presigned_get(
        self, tenant_id: uuid.UUID, key: str, expires: timedelta | None = None
    ) -> str:
        full = full_key(tenant_id, key)
        await self.stat(tenant_id, key)
        expires_at = int(time.time() + (expires or timedelta(hours=1)).total_seconds())
        query = urlencode(
            {"expires": expires_at, "signature": _sign(self._secret, full, expires_at)}
        )
        return f"{self.url_base}/objects/{full}?{query}"

    def verify(self, full: str, expires_at: int, signature: str) -> Path:
        """The file behind a presigned URL, if the URL is genuine and not expired."""
        parts = full.split("/", 2)
        if len(parts) != 3 or parts[0] != "tenants":
            raise NotFoundError("no such object")
        try:
            full = full_key(uuid.UUID(parts[1]), parts[2])
        except (ValueError, InvalidKeyError):
            raise NotFoundError("no such object") from None
        expected = _sign(self._secret, full, expires_at)
        if not hmac.compare_digest(expected, signature) or expires_at < time.time():
            raise NotFoundError("the link is invalid or has expired")
        return self._paths(full)[0]

    async def probe(self) -> None:
        await self.ensure_bucket()
        if not os.access(self.root / "data", os.W_OK):
            raise PermissionError(f"{self.root} is not writable")

    async def close(self) -> None:
        return None


def minio_client(settings: Settings) -> Minio:
    """A client of MINIO_ENDPOINT with MINIO_* credentials, bounded timeouts and retries of
    the gateway errors (the object store's and the backups' bucket share it)."""
    import urllib3
    from minio import Minio

    assert settings.minio_endpoint is not None
    timeout = urllib3.Timeout(connect=5.0, read=60.0)
    http = urllib3.PoolManager(
        timeout=timeout,
        maxsize=10,
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
    )
    return Minio(
        settings.minio_endpoint,
        access_key=settings.minio_access_key.get_secret_value(),
        secret_key=settings.minio_secret_key.get_secret_value(),
        secure=settings.minio_secure,
        region=settings.minio_region,
        http_client=http,
    )


class MinioObjectStore:
    """MinIO or any S3 through the `minio` SDK; its blocking calls run in worker threads."""

    kind = "minio"

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self._bucket_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> MinioObjectStore:
        return cls(minio_client(settings), settings.minio_bucket)

    async def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        if not await asyncio.to_thread(self.client.bucket_exists, self.bucket):
            try:
                await asyncio.to_thread(self.client.make_bucket, self.bucket)
            except S3Error as exc:  # another process made it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._bucket_ready = True

    async def put(
        self,
        tenant_id: uuid.UUID,
        key: str,
        data: bytes | AsyncIterable[bytes],
        *,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> ObjectInfo:
        full = full_key(tenant_id, key)
        meter = _Meter(length, max_bytes)
        await self.ensure_bucket()
        chunks = cast(AsyncGenerator[bytes], _chunks(data))
        reader = _BlockingReader(chunks, meter, asyncio.get_running_loop())
        try:
            await asyncio.to_thread(
                self.client.put_object,
                self.bucket,
                full,
                cast(BinaryIO, reader),
                length if length is not None else -1,
                content_type=content_type,
                part_size=PART_SIZE,
                num_parallel_uploads=1,
            )
        finally:
            await chunks.aclose()
        return await self.stat(tenant_id, key)

    def _not_found(self, exc: Exception, key: str) -> Exception:
        from minio.error import S3Error

        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
            return NotFoundError(f"object {key!r} does not exist")
        return exc

    async def stat(self, tenant_id: uuid.UUID, key: str) -> ObjectInfo:
        full = full_key(tenant_id, key)
        try:
            found = await asyncio.to_thread(self.client.stat_object, self.bucket, full)
        except Exception as exc:
            raise self._not_found(exc, key) from exc
        return ObjectInfo(
            key=key,
            size=found.size or 0,
            content_type=found.content_type or DEFAULT_CONTENT_TYPE,
            etag=found.etag,
            last_modified=found.last_modified,
        )

    async def get(self, tenant_id: uuid.UUID, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        full = full_key(tenant_id, key)
        info = await self.stat(tenant_id, key)
        try:
            response = await asyncio.to_thread(self.client.get_object, self.bucket, full)
        except Exception as exc:
            raise self._not_found(exc, key) from exc
        return info, self._stream(response)

    async def _stream(self, response: Any) -> AsyncIterator[bytes]:
        chunks: Iterator[bytes] = response.stream(CHUNK_SIZE)
        try:
            while chunk := await asyncio.to_thread(next, chunks, b""):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def delete(self, tenant_id: uuid.UUID, key: str) -> None:
        await asyncio.to_thread(self.client.remove_object, self.bucket, full_key(tenant_id, key))

    async def list(self, tenant_id: uuid.UUID, prefix: str = "") -> builtins.list[ObjectInfo]:
        base = tenant_prefix(tenant_id)
        check_prefix(prefix)
        await self.ensure_bucket()

        def collect() -> builtins.list[ObjectInfo]:
            return [
                ObjectInfo(
                    key=(item.object_name or "").removeprefix(base),
                    size=item.size or 0,
                    content_type=item.content_type or DEFAULT_CONTENT_TYPE,
                    etag=item.etag,
                    last_modified=item.last_modified,
                )
                for item in self.client.list_objects(self.bucket, base + prefix, recursive=True)
            ]

        return await asyncio.to_thread(collect)

    async def presigned_get(
        self, tenant_id: uuid.UUID, key: str, expires: timedelta | None = None
    ) -> str:
        full = full_key(tenant_id, key)
        await self.stat(tenant_id, key)
        return await asyncio.to_thread(
            self.client.presigned_get_object,
            self.bucket,
            full,
            expires=expires or timedelta(hours=1),
        )

    async def probe(self) -> None:
        await asyncio.to_thread(self.client.bucket_exists, self.bucket)

    async def close(self) -> None:
        http = getattr(self.client, "_http", None)
        if http is not None:
            http.clear()


def create_object_store(settings: Settings) -> ObjectStore:
    if settings.minio_endpoint:
        return MinioObjectStore.from_settings(settings)
    return LocalObjectStore(
        settings.object_dir,
        url_base=settings.public_url,
        signing_secret=settings.signing_secret().encode(),
    )
