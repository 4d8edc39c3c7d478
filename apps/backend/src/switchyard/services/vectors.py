"""Vectors in ChromaDB: one collection per tenant, embeddings always supplied by us.

With CHROMA_HOST the async HTTP client talks to a Chroma server; without it an embedded
`PersistentClient` keeps the vectors under VAR_DIR (its blocking calls run in threads).
Collections are created with no embedding function, so Chroma never loads (or downloads)
a model of its own. `chromadb` is imported on first use: it takes seconds to import.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpx

from switchyard.errors import SwitchyardError

if TYPE_CHECKING:
    from switchyard.settings import Settings

Scalar = str | int | float | bool
Where = Mapping[str, Scalar | Sequence[Scalar]]
DOCUMENT_ID: Final = "document_id"
MAX_TOP_K: Final = 100
T = TypeVar("T")


class VectorInputError(SwitchyardError):
    status = 422
    code = "invalid_vectors"
    title = "Invalid vectors"


@dataclass(frozen=True)
class VectorChunk:
    id: str
    document_id: uuid.UUID
    text: str
    embedding: Sequence[float]
    metadata: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorMatch:
    id: str
    document_id: uuid.UUID
    text: str
    distance: float
    metadata: dict[str, Scalar]

    @property
    def score(self) -> float:
        """Cosine similarity (collections use the cosine space)."""
        return 1.0 - self.distance


def collection_name(tenant_id: uuid.UUID, space: str = "") -> str:
    """`tenant-<hex>`, plus the vector space (the embedding model) when one is named, so a
    change of embedding model never mixes dimensions in one collection."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a UUID taken from the principal")
    return f"tenant-{tenant_id.hex}" + (f"-{space}" if space else "")


def to_where(where: Where | None) -> dict[str, Any] | None:
    """Equality filters, a list meaning "any of"; several keys must all match."""
    if not where:
        return None
    clauses: list[dict[str, Any]] = []
    for key, value in where.items():
        if isinstance(value, str | int | float | bool):
            clauses.append({key: {"$eq": value}})
        else:
            clauses.append({key: {"$in": list(value)}})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _chroma_settings() -> Any:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False)


class VectorStore:
    """Per-tenant collections in Chroma, over the async HTTP client or the embedded one."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        path: os.PathLike[str] | str | None = None,
        space: str = "",
    ) -> None:
        if host is None and path is None:
            raise ValueError("a Chroma host or a directory is needed")
        self.host = host
        self.port = port
        self.ssl = ssl
        self.path = path
        self.kind = "http" if host else "embedded"
        self.space = space
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._collections: dict[uuid.UUID, Any] = {}

    @classmethod
    def from_settings(cls, settings: Settings, space: str = "") -> VectorStore:
        if settings.chroma_host:
            return cls(
                host=settings.chroma_host,
                port=settings.chroma_port,
                ssl=settings.chroma_ssl,
                space=space,
            )
        return cls(path=settings.vector_dir, space=space)

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.kind == "http":
            return await function(*args, **kwargs)
        return await asyncio.to_thread(function, *args, **kwargs)

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    async def _connect(self) -> Any:
        # Importing chromadb takes seconds: never on the event loop's thread.
        await asyncio.to_thread(importlib.import_module, "chromadb")
        if self.kind == "http":
            import chromadb

            return await chromadb.AsyncHttpClient(
                host=self.host or "", port=self.port, ssl=self.ssl, settings=_chroma_settings()
            )

        def open_embedded() -> Any:
            import chromadb

            assert self.path is not None
            os.makedirs(self.path, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.path), settings=_chroma_settings())

        return await asyncio.to_thread(open_embedded)

    async def _open(self, name: str, metadata: Mapping[str, Any] | None) -> Any:
        """The collection `name`, made in the cosine space when missing."""
        client = await self.client()
        return await self._call(
            client.get_or_create_collection,
            name=name,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata=metadata or None,
        )

    async def collection(self, tenant_id: uuid.UUID) -> Any:
        found = self._collections.get(tenant_id)
        if found is None:
            name = collection_name(tenant_id, self.space)
            found = await self._open(name, {"tenant_id": str(tenant_id)})
            self._collections[tenant_id] = found
        return found

    async def _guarded(self, action: Awaitable[T]) -> T:
        from chromadb.errors import InvalidArgumentError

        try:
            return await action
        except (ValueError, TypeError, InvalidArgumentError) as exc:
            raise VectorInputError(str(exc).splitlines()[0][:300]) from exc

    async def upsert(self, tenant_id: uuid.UUID, chunks: Sequence[VectorChunk]) -> None:
        if not chunks:
            return
        collection = await self.collection(tenant_id)
        await self._guarded(
            self._call(
                collection.upsert,
                ids=[chunk.id for chunk in chunks],
                embeddings=[list(map(float, chunk.embedding)) for chunk in chunks],
                documents=[chunk.text for chunk in chunks],
                metadatas=[
                    {**chunk.metadata, DOCUMENT_ID: str(chunk.document_id)} for chunk in chunks
                ],
            )
        )

    async def query(
        self,
        tenant_id: uuid.UUID,
        embedding: Sequence[float],
        *,
        top_k: int = 5,
        where: Where | None = None,
    ) -> list[VectorMatch]:
        if not 1 <= top_k <= MAX_TOP_K:
            raise VectorInputError(f"top_k must be between 1 and {MAX_TOP_K}")
        collection = await self.collection(tenant_id)
        result = await self._guarded(
            self._call(
                collection.query,
                query_embeddings=[list(map(float, embedding))],
                n_results=top_k,
                where=to_where(where),
                include=["documents", "metadatas", "distances"],
            )
        )
        matches = []
        for ident, text, metadata, distance in zip(
            result["ids"][0],
            result["documents"][0],
            result["metadatas"][0],
            result["distances"][0],
            strict=True,
        ):
            meta = dict(metadata or {})
            document_id = uuid.UUID(str(meta.pop(DOCUMENT_ID)))
            matches.append(VectorMatch(ident, document_id, text or "", float(distance), meta))
        return matches

    async def count(self, tenant_id: uuid.UUID) -> int:
        collection = await self.collection(tenant_id)
        return int(await self._call(collection.count))

    async def delete_document(self, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
        collection = await self.collection(tenant_id)
        await self._call(collection.delete, where={DOCUMENT_ID: {"$eq": str(document_id)}})

    async def drop_tenant(self, tenant_id: uuid.UUID) -> None:
        client = await self.client()
        self._collections.pop(tenant_id, None)
        try:
            await self._call(client.delete_collection, collection_name(tenant_id, self.space))
        except Exception as exc:  # absent already: nothing to drop
            if "does not exist" not in str(exc) and "NotFound" not in type(exc).__name__:
                raise

    async def drop_every_space(self, tenant_id: uuid.UUID) -> int:
        """Drop the tenant's collections of every vector space (embedding model), not only
        this store's; how many. An embedded store never opened has none."""
        if self.kind == "embedded" and not os.path.isdir(self.path or ""):  # noqa: ASYNC240
            return 0
        client = await self.client()
        self._collections.pop(tenant_id, None)
        prefix = collection_name(tenant_id)
        listed = await self._call(client.list_collections)
        names = [getattr(found, "name", found) for found in listed]
        mine = [name for name in names if name == prefix or name.startswith(prefix + "-")]
        for name in mine:
            await self._call(client.delete_collection, name)
        return len(mine)

    async def export_collections(
        self, page: int = 1000
    ) -> AsyncIterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        """Every collection of the server (every tenant, every vector space), in pages:
        (its name, its metadata, records with id, embedding, document and metadata). For
        backups: restored with `import_collection`."""
        if self.kind == "embedded" and not os.path.isdir(self.path or ""):  # noqa: ASYNC240
            return
        client = await self.client()
        listed = await self._call(client.list_collections)
        for found in listed:
            name = getattr(found, "name", found)
            collection = await self._call(client.get_collection, name, embedding_function=None)
            metadata = dict(getattr(collection, "metadata", None) or {})
            offset = 0
            while True:
                got = await self._call(
                    collection.get,
                    include=["embeddings", "documents", "metadatas"],
                    limit=page,
                    offset=offset,
                )
                ids = list(got["ids"])
                if not ids:
                    break
                embeddings = got["embeddings"]
                yield (
                    name,
                    metadata,
                    [
                        {
                            "id": ids[i],
                            "embedding": [float(x) for x in embeddings[i]],
                            "document": got["documents"][i],
                            "metadata": got["metadatas"][i],
                        }
                        for i in range(len(ids))
                    ],
                )
                offset += len(ids)

    async def import_collection(
        self, name: str, metadata: dict[str, Any], records: Sequence[dict[str, Any]]
    ) -> None:
        """Upsert exported records into the collection `name` (made with its metadata, in the
        cosine space, when missing)."""
        collection = await self._open(name, metadata)
        self._collections.clear()
        if records:
            await self._call(
                collection.upsert,
                ids=[record["id"] for record in records],
                embeddings=[record["embedding"] for record in records],
                documents=[record["document"] for record in records],
                metadatas=[record["metadata"] for record in records],
            )

    async def probe(self) -> None:
        if self.kind == "http":
            # The REST heartbeat, not the client: importing chromadb takes seconds.
            scheme = "https" if self.ssl else "http"
            async with httpx.AsyncClient(timeout=5.0) as http:
                response = await http.get(f"{scheme}://{self.host}:{self.port}/api/v2/heartbeat")
                response.raise_for_status()
            return
        if self._client is None:
            # The embedded store opens on first use; until then a writable directory is "up".
            assert self.path is not None
            await asyncio.to_thread(os.makedirs, self.path, exist_ok=True)
            if not os.access(self.path, os.W_OK):
                raise PermissionError(f"{self.path} is not writable")
            return
        await self._call(self._client.heartbeat)

    async def close(self) -> None:
        self._collections.clear()
        self._client = None
