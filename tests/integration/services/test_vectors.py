"""Vectors: the same behaviour from the embedded Chroma client and from a `chroma run` server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from switchyard.services.vectors import (
    VectorChunk,
    VectorInputError,
    VectorStore,
    collection_name,
    to_where,
)
from switchyard.settings import Settings
from tests.fakes.zhipu import embed


@pytest.fixture(params=["embedded", "http"])
async def vectors(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    if request.param == "http":
        host, port = request.getfixturevalue("chroma_server")
        settings = Settings(chroma_host=host, chroma_port=port)
    else:
        settings = Settings(var_dir=tmp_path)
    store = VectorStore.from_settings(settings)
    assert store.kind == request.param
    yield store
    await store.close()


def chunks_for(document_id: uuid.UUID, texts: list[str], **metadata: str) -> list[VectorChunk]:
    return [
        VectorChunk(
            id=f"{document_id}:{i}",
            document_id=document_id,
            text=text,
            embedding=embed(text),
            metadata={"position": i, **metadata},
        )
        for i, text in enumerate(texts)
    ]


async def test_upsert_then_query_by_embedding(vectors: VectorStore) -> None:
    tenant, document = uuid.uuid4(), uuid.uuid4()
    await vectors.upsert(
        tenant,
        chunks_for(
            document,
            ["rabbits eat carrots in the garden", "the stock market fell sharply", "carrots"],
            source="notes",
        ),
    )
    matches = await vectors.query(tenant, embed("what do rabbits eat"), top_k=2)
    assert next(m.text for m in matches) == "rabbits eat carrots in the garden"
    assert len(matches) == 2
    best = matches[0]
    assert best.document_id == document
    assert best.metadata == {"position": 0, "source": "notes"}
    assert 0 < best.score <= 1
    assert matches[0].distance <= matches[1].distance

    # Upserting the same id replaces the chunk instead of adding one.
    await vectors.upsert(tenant, chunks_for(document, ["rabbits sleep in burrows"]))
    assert await vectors.count(tenant) == 3
    assert (await vectors.query(tenant, embed("rabbits sleep"), top_k=1))[0].text == (
        "rabbits sleep in burrows"
    )


async def test_metadata_filters_and_delete_by_document(vectors: VectorStore) -> None:
    tenant, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await vectors.upsert(tenant, chunks_for(first, ["alpha one", "alpha two"], lang="en"))
    await vectors.upsert(tenant, chunks_for(second, ["alpha three"], lang="de"))

    german = await vectors.query(tenant, embed("alpha"), top_k=10, where={"lang": "de"})
    assert [m.document_id for m in german] == [second]
    either = await vectors.query(
        tenant, embed("alpha"), top_k=10, where={"document_id": [str(first), str(second)]}
    )
    assert len(either) == 3
    both = await vectors.query(
        tenant, embed("alpha"), top_k=10, where={"lang": "en", "position": 1}
    )
    assert [m.text for m in both] == ["alpha two"]

    await vectors.delete_document(tenant, first)
    remaining = await vectors.query(tenant, embed("alpha"), top_k=10)
    assert [m.document_id for m in remaining] == [second]


async def test_tenants_have_separate_collections(vectors: VectorStore) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    await vectors.upsert(tenant, chunks_for(uuid.uuid4(), ["private text of the first tenant"]))
    await vectors.upsert(other, chunks_for(uuid.uuid4(), ["unrelated words entirely"]))
    found = await vectors.query(other, embed("private text of the first tenant"), top_k=5)
    assert [m.text for m in found] == ["unrelated words entirely"]

    await vectors.drop_tenant(other)
    await vectors.drop_tenant(other)  # dropping twice is fine
    assert await vectors.count(other) == 0
    assert await vectors.count(tenant) == 1


async def test_bad_input_is_a_client_error(vectors: VectorStore) -> None:
    tenant = uuid.uuid4()
    await vectors.upsert(tenant, chunks_for(uuid.uuid4(), ["some text"]))
    with pytest.raises(VectorInputError):
        await vectors.query(tenant, embed("x"), top_k=0)
    with pytest.raises(VectorInputError):
        await vectors.query(tenant, [0.1, 0.2], top_k=1)  # wrong dimension
    with pytest.raises(TypeError):
        collection_name("tenant-x")  # type: ignore[arg-type]
    await vectors.probe()


def test_filters_translate_to_chroma_where() -> None:
    assert to_where(None) is None
    assert to_where({"a": 1}) == {"a": {"$eq": 1}}
    assert to_where({"a": "x", "b": ["1", "2"]}) == {
        "$and": [{"a": {"$eq": "x"}}, {"b": {"$in": ["1", "2"]}}]
    }


async def test_embedded_probe_checks_the_directory_until_opened(tmp_path: Path) -> None:
    store = VectorStore(path=tmp_path / "v")
    await store.probe()
    assert (tmp_path / "v").is_dir()
    assert store._client is None  # the probe did not pay for importing chromadb
    with pytest.raises(ValueError, match="host or a directory"):
        VectorStore()


async def test_server_probe_needs_no_client(chroma_server: tuple[str, int]) -> None:
    store = VectorStore(host=chroma_server[0], port=chroma_server[1])
    await store.probe()
    assert store._client is None
    with pytest.raises(httpx.HTTPError):
        await VectorStore(host="127.0.0.1", port=9).probe()
