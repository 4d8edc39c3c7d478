"""Object storage: the same behaviour from the MinIO client (against moto's S3 server) and
from the local directory store."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from switchyard.errors import NotFoundError
from switchyard.services.objects import (
    PART_SIZE,
    InvalidKeyError,
    LocalObjectStore,
    MinioObjectStore,
    ObjectStore,
    ObjectTooLargeError,
    SizeMismatchError,
    create_object_store,
)
from switchyard.settings import Settings
from tests.fixtures.backing import S3_ACCESS_KEY, S3_SECRET_KEY


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def stream_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.fixture(params=["minio", "local"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str
) -> AsyncIterator[ObjectStore]:
    if request.param == "minio":
        settings = Settings(
            minio_endpoint=s3_endpoint,
            minio_access_key=S3_ACCESS_KEY,
            minio_secret_key=S3_SECRET_KEY,
            minio_bucket=f"bucket-{uuid.uuid4().hex[:12]}",
            minio_region="us-east-1",
        )
    else:
        settings = Settings(var_dir=tmp_path, public_base_url="http://gateway.test:8000")
    made = create_object_store(settings)
    assert made.kind == request.param
    await made.ensure_bucket()
    yield made
    await made.close()


async def test_put_stat_get_delete_round_trip(store: ObjectStore) -> None:
    tenant = uuid.uuid4()
    info = await store.put(tenant, "docs/a.txt", b"hello objects", content_type="text/plain")
    assert (info.key, info.size, info.content_type) == ("docs/a.txt", 13, "text/plain")

    stat = await store.stat(tenant, "docs/a.txt")
    assert (stat.size, stat.content_type) == (13, "text/plain")
    got, stream = await store.get(tenant, "docs/a.txt")
    assert got.size == 13
    assert await read_all(stream) == b"hello objects"

    await store.delete(tenant, "docs/a.txt")
    with pytest.raises(NotFoundError):
        await store.stat(tenant, "docs/a.txt")
    with pytest.raises(NotFoundError):
        await store.get(tenant, "docs/a.txt")


async def test_streamed_put_of_unknown_length_spans_parts(store: ObjectStore) -> None:
    tenant = uuid.uuid4()
    block = bytes(range(256)) * 4096  # 1 MiB
    count = PART_SIZE // len(block) + 2  # more than one multipart part
    expected = hashlib.sha256(block * count).hexdigest()

    info = await store.put(tenant, "big.bin", stream_of(*([block] * count)))
    assert info.size == len(block) * count
    _, stream = await store.get(tenant, "big.bin")
    digest = hashlib.sha256()
    async for chunk in stream:
        digest.update(chunk)
    assert digest.hexdigest() == expected


async def test_size_limit_and_declared_length_leave_nothing_behind(store: ObjectStore) -> None:
    tenant = uuid.uuid4()
    with pytest.raises(ObjectTooLargeError):
        await store.put(tenant, "too-big.bin", stream_of(b"x" * 600, b"y" * 600), max_bytes=1000)
    with pytest.raises(ObjectTooLargeError):
        await store.put(tenant, "declared.bin", b"x", length=2000, max_bytes=1000)
    with pytest.raises(SizeMismatchError):
        await store.put(tenant, "short.bin", stream_of(b"abc"), length=10)
    assert await store.list(tenant) == []


async def test_listing_is_by_prefix_within_one_tenant(store: ObjectStore) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    for key in ("docs/1/a.txt", "docs/1/b.txt", "docs/2/c.txt", "images/d.png"):
        await store.put(tenant, key, key.encode())
    await store.put(other, "docs/1/a.txt", b"other tenant")

    assert [o.key for o in await store.list(tenant, "docs/1/")] == ["docs/1/a.txt", "docs/1/b.txt"]
    assert len(await store.list(tenant)) == 4
    assert [o.key for o in await store.list(other)] == ["docs/1/a.txt"]
    _, stream = await store.get(other, "docs/1/a.txt")
    assert await read_all(stream) == b"other tenant"


@pytest.mark.parametrize(
    "key",
    ["../other/secret", "a/../../b", "/etc/passwd", "a//b", ".hidden", "a/./b", "", "a\\b", "ü"],
)
async def test_keys_cannot_leave_the_tenant_prefix(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        await store.put(uuid.uuid4(), key, b"x")
    if key:  # an empty prefix lists everything
        with pytest.raises(InvalidKeyError):
            await store.list(uuid.uuid4(), key)


async def test_tenant_must_be_a_uuid_not_text(store: ObjectStore) -> None:
    with pytest.raises(TypeError):
        await store.put("../tenants/x", "a.txt", b"x")  # type: ignore[arg-type]


async def test_presigned_get_serves_the_object_until_it_expires(
    store: ObjectStore, s3_endpoint: str
) -> None:
    tenant = uuid.uuid4()
    await store.put(tenant, "shared/report.txt", b"presigned body", content_type="text/plain")
    url = await store.presigned_get(tenant, "shared/report.txt", timedelta(minutes=5))
    assert f"tenants/{tenant}/shared/report.txt" in url
    with pytest.raises(NotFoundError):
        await store.presigned_get(tenant, "shared/missing.txt")

    if isinstance(store, MinioObjectStore):
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
        assert response.status_code == 200
        assert response.content == b"presigned body"
        # moto serves unsigned requests too; the expiry is what the client signed into the URL.
        assert "X-Amz-Expires=300" in url
        assert "X-Amz-Signature=" in url
    else:
        assert isinstance(store, LocalObjectStore)
        assert url.startswith("http://gateway.test:8000/objects/")
        path, query = url.removeprefix("http://gateway.test:8000/objects/").split("?")
        params = dict(pair.split("=") for pair in query.split("&"))
        served = store.verify(path, int(params["expires"]), params["signature"])
        assert served.read_bytes() == b"presigned body"
        with pytest.raises(NotFoundError):
            store.verify(path, int(params["expires"]) + 1, params["signature"])
        with pytest.raises(NotFoundError):
            store.verify(path.replace(str(tenant), str(uuid.uuid4())), 0, params["signature"])
        expired = await store.presigned_get(tenant, "shared/report.txt", timedelta(seconds=-1))
        _, query = expired.split("?")
        params = dict(pair.split("=") for pair in query.split("&"))
        with pytest.raises(NotFoundError):
            store.verify(path, int(params["expires"]), params["signature"])


async def test_probe_reports_a_store_it_cannot_reach() -> None:
    unreachable = create_object_store(
        Settings(minio_endpoint="127.0.0.1:9", minio_access_key="a", minio_secret_key="b")
    )
    with pytest.raises(Exception, match=r"(?i)connect|refused|retries"):
        await unreachable.probe()
    await unreachable.close()
