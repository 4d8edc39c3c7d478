"""The documents domain's graph repository: the knowledge graph in Neo4j.

(:Tenant)-[:OWNS]->(:Document)-[:HAS_CHUNK]->(:Chunk)-[:MENTIONS]->(:Entity); every node
carries `tenant_id`, and every query matches on it. Queries are constants with `$parameters`:
nothing from input is ever spliced into Cypher. Without NEO4J_URI there is no graph (the
client is `services.neo4j`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, LiteralString, NamedTuple

from switchyard.documents.schemas import DocumentGraph
from switchyard.services.container import Services
from switchyard.services.neo4j import GraphDisabledError, Neo4j

CONSTRAINTS: Final[tuple[LiteralString, ...]] = (
    "CREATE CONSTRAINT tenant_id IF NOT EXISTS FOR (t:Tenant) REQUIRE t.tenant_id IS UNIQUE",
    "CREATE CONSTRAINT document_key IF NOT EXISTS "
    "FOR (d:Document) REQUIRE (d.tenant_id, d.id) IS UNIQUE",
    "CREATE CONSTRAINT chunk_key IF NOT EXISTS FOR (c:Chunk) REQUIRE (c.tenant_id, c.id) IS UNIQUE",
    "CREATE CONSTRAINT entity_key IF NOT EXISTS "
    "FOR (e:Entity) REQUIRE (e.tenant_id, e.key) IS UNIQUE",
)

UPSERT_DOCUMENT: Final = """
MERGE (t:Tenant {tenant_id: $tenant_id})
MERGE (d:Document {tenant_id: $tenant_id, id: $document_id})
SET d.title = $title, d.updated_at = datetime()
MERGE (t)-[:OWNS]->(d)
"""

ADD_CHUNKS: Final = """
MATCH (d:Document {tenant_id: $tenant_id, id: $document_id})
UNWIND $chunks AS chunk
MERGE (c:Chunk {tenant_id: $tenant_id, id: chunk.id})
SET c.position = chunk.position, c.text = chunk.text, c.document_id = $document_id
MERGE (d)-[:HAS_CHUNK]->(c)
RETURN count(c) AS written
"""

ADD_MENTIONS: Final = """
UNWIND $mentions AS mention
MATCH (c:Chunk {tenant_id: $tenant_id, id: mention.chunk_id})
MERGE (e:Entity {tenant_id: $tenant_id, key: mention.key})
ON CREATE SET e.name = mention.name, e.kind = mention.kind
MERGE (c)-[:MENTIONS]->(e)
RETURN count(e) AS written
"""

DELETE_DOCUMENT: Final = """
MATCH (d:Document {tenant_id: $tenant_id, id: $document_id})
OPTIONAL MATCH (d)-[:HAS_CHUNK]->(c:Chunk {tenant_id: $tenant_id})
DETACH DELETE c, d
"""

DELETE_ORPHAN_ENTITIES: Final = """
MATCH (e:Entity {tenant_id: $tenant_id})
WHERE NOT (e)<-[:MENTIONS]-(:Chunk {tenant_id: $tenant_id})
DETACH DELETE e
"""

ENTITIES: Final = """
MATCH (e:Entity {tenant_id: $tenant_id})<-[:MENTIONS]-(c:Chunk {tenant_id: $tenant_id})
RETURN e.name AS name, e.kind AS kind, count(DISTINCT c) AS mentions
ORDER BY mentions DESC, name
LIMIT $limit
"""

CHUNKS_MENTIONING: Final = """
MATCH (e:Entity {tenant_id: $tenant_id})<-[:MENTIONS]-(c:Chunk {tenant_id: $tenant_id})
WHERE e.key IN $keys
RETURN c.id AS chunk_id, c.document_id AS document_id, c.text AS text,
       collect(DISTINCT e.name) AS entities
ORDER BY size(entities) DESC, chunk_id
LIMIT $limit
"""

DOCUMENT_SUMMARY: Final = """
MATCH (:Tenant {tenant_id: $tenant_id})
      -[:OWNS]->(d:Document {tenant_id: $tenant_id, id: $document_id})
OPTIONAL MATCH (d)-[:HAS_CHUNK]->(c:Chunk {tenant_id: $tenant_id})
OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity {tenant_id: $tenant_id})
RETURN d.title AS title, count(DISTINCT c) AS chunks, collect(DISTINCT e.name) AS entities
"""

# A tenant's deletion (tenants.deletion): its nodes of each label, a batch at a time.
DROP_TENANT: Final = tuple(
    f"""
MATCH (n:{label} {{tenant_id: $tenant_id}})
WITH n LIMIT $batch
DETACH DELETE n
RETURN count(n) AS deleted
"""
    for label in ("Chunk", "Entity", "Document", "Tenant")
)

QUERIES: Final = (
    UPSERT_DOCUMENT,
    ADD_CHUNKS,
    ADD_MENTIONS,
    DELETE_DOCUMENT,
    DELETE_ORPHAN_ENTITIES,
    ENTITIES,
    CHUNKS_MENTIONING,
    DOCUMENT_SUMMARY,
    *DROP_TENANT,
)


@dataclass(frozen=True)
class GraphChunk:
    id: str
    position: int
    text: str


@dataclass(frozen=True)
class Mention:
    chunk_id: str
    name: str
    kind: str = "thing"

    @property
    def key(self) -> str:
        return f"{self.kind.casefold()}:{' '.join(self.name.casefold().split())}"


class EntityCount(NamedTuple):
    """An entity of a tenant's graph and how many chunks mention it (a row of ENTITIES)."""

    name: str
    kind: str
    mentions: int


class ChunkHit(NamedTuple):
    """A chunk that mentions some of the entities asked for (a row of CHUNKS_MENTIONING)."""

    chunk_id: str
    document_id: uuid.UUID
    text: str
    entities: list[str]


def _tenant(tenant_id: uuid.UUID) -> str:
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("tenant_id must be a UUID taken from the principal")
    return str(tenant_id)


class KnowledgeGraph:
    """The graph repository, on the services' Neo4j client."""

    def __init__(self, neo4j: Neo4j) -> None:
        self.neo4j = neo4j

    async def _execute(
        self, query: LiteralString, parameters: dict[str, Any], *, write: bool
    ) -> list[dict[str, Any]]:
        return await self.neo4j.execute(query, parameters, write=write)

    async def _write(self, query: LiteralString, **parameters: Any) -> list[dict[str, Any]]:
        return await self._execute(query, parameters, write=True)

    async def _read(self, query: LiteralString, **parameters: Any) -> list[dict[str, Any]]:
        return await self._execute(query, parameters, write=False)

    async def ensure_constraints(self) -> None:
        """Run by `migrate`: uniqueness per tenant for every node label (idempotent).

        Connectivity is checked first, so an unreachable server fails at once instead of
        after the driver's retries."""
        await self.neo4j.probe()
        for statement in CONSTRAINTS:
            await self._write(statement)

    async def upsert_document(
        self, tenant_id: uuid.UUID, document_id: uuid.UUID, title: str
    ) -> None:
        await self._write(
            UPSERT_DOCUMENT, tenant_id=_tenant(tenant_id), document_id=str(document_id), title=title
        )

    async def add_chunks(
        self, tenant_id: uuid.UUID, document_id: uuid.UUID, chunks: Sequence[GraphChunk]
    ) -> int:
        rows = await self._write(
            ADD_CHUNKS,
            tenant_id=_tenant(tenant_id),
            document_id=str(document_id),
            chunks=[{"id": c.id, "position": c.position, "text": c.text} for c in chunks],
        )
        return int(rows[0]["written"]) if rows else 0

    async def add_mentions(self, tenant_id: uuid.UUID, mentions: Sequence[Mention]) -> int:
        rows = await self._write(
            ADD_MENTIONS,
            tenant_id=_tenant(tenant_id),
            mentions=[
                {"chunk_id": m.chunk_id, "key": m.key, "name": m.name, "kind": m.kind}
                for m in mentions
            ],
        )
        return int(rows[0]["written"]) if rows else 0

    async def delete_document(self, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
        tenant = _tenant(tenant_id)
        await self._write(DELETE_DOCUMENT, tenant_id=tenant, document_id=str(document_id))
        await self._write(DELETE_ORPHAN_ENTITIES, tenant_id=tenant)

    async def drop_tenant(self, tenant_id: uuid.UUID, batch: int = 10_000) -> int:
        """Every node of the tenant's, and their relationships; how many nodes."""
        tenant, deleted = _tenant(tenant_id), 0
        for query in DROP_TENANT:
            while True:
                rows = await self._write(query, tenant_id=tenant, batch=batch)
                count = int(rows[0]["deleted"]) if rows else 0
                deleted += count
                if count < batch:
                    break
        return deleted

    async def entities(self, tenant_id: uuid.UUID, limit: int = 50) -> list[EntityCount]:
        rows = await self._read(ENTITIES, tenant_id=_tenant(tenant_id), limit=limit)
        return [EntityCount(r["name"], r["kind"], int(r["mentions"])) for r in rows]

    async def chunks_mentioning(
        self, tenant_id: uuid.UUID, entities: Sequence[Mention], limit: int = 20
    ) -> list[ChunkHit]:
        rows = await self._read(
            CHUNKS_MENTIONING,
            tenant_id=_tenant(tenant_id),
            keys=[m.key for m in entities],
            limit=limit,
        )
        return [
            ChunkHit(r["chunk_id"], uuid.UUID(r["document_id"]), r["text"], list(r["entities"]))
            for r in rows
        ]

    async def document_summary(
        self, tenant_id: uuid.UUID, document_id: uuid.UUID
    ) -> DocumentGraph | None:
        """The document's place in the graph: its title, chunks and the entities they name."""
        rows = await self._read(
            DOCUMENT_SUMMARY, tenant_id=_tenant(tenant_id), document_id=str(document_id)
        )
        if not rows or rows[0].get("title") is None:
            return None
        row = rows[0]
        return DocumentGraph(
            document_id=document_id,
            title=str(row["title"]),
            chunks=int(row["chunks"]),
            entities=sorted(str(name) for name in row["entities"]),
        )


def graph_of(services: Services) -> KnowledgeGraph | None:
    """The knowledge graph of a role's services; None without NEO4J_URI."""
    return KnowledgeGraph(services.neo4j) if services.neo4j is not None else None


def require_graph(services: Services) -> KnowledgeGraph:
    """The knowledge graph, or 503 naming NEO4J_URI."""
    graph = graph_of(services)
    if graph is None:
        raise GraphDisabledError
    return graph
