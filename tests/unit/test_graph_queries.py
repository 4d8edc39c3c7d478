"""The graph repository's Cypher and parameters, checked without a server (none runs here)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from switchyard.documents import graph
from switchyard.documents.graph import (
    CONSTRAINTS,
    QUERIES,
    GraphChunk,
    KnowledgeGraph,
    Mention,
)
from switchyard.documents.schemas import DocumentGraph
from switchyard.services.neo4j import GraphDisabledError, Neo4j, create_neo4j
from switchyard.settings import Settings

NODE = re.compile(r"\((\w*):(Tenant|Document|Chunk|Entity)(?: \{([^}]*)\})?\)")


@dataclass
class Record:
    values: dict[str, Any]

    def data(self) -> dict[str, Any]:
        return self.values


@dataclass
class Result:
    records: list[Record]


@dataclass
class RecordingDriver:
    answers: list[list[dict[str, Any]]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any], str, str | None]] = field(default_factory=list)
    verified: int = 0

    async def verify_connectivity(self) -> None:
        self.verified += 1

    async def close(self) -> None:
        return None

    async def execute_query(
        self, query: str, parameters: dict[str, Any], *, routing_: Any, database_: str | None
    ) -> Result:
        self.calls.append((query, parameters, str(routing_.value), database_))
        rows = self.answers.pop(0) if self.answers else []
        return Result([Record(row) for row in rows])


@pytest.fixture
def driver() -> RecordingDriver:
    return RecordingDriver()


@pytest.fixture
def repository(driver: RecordingDriver) -> KnowledgeGraph:
    return KnowledgeGraph(Neo4j(driver, database="knowledge"))  # type: ignore[arg-type]


@pytest.mark.parametrize("query", QUERIES)
def test_every_node_in_every_query_is_matched_by_tenant(query: str) -> None:
    nodes = NODE.findall(query)
    assert nodes, query
    for variable, label, properties in nodes:
        # A bare (x) reference to an already-bound variable is fine; a labelled node
        # pattern must pin the tenant.
        assert "tenant_id: $tenant_id" in properties, f"({variable}:{label}) in {query}"


@pytest.mark.parametrize("query", QUERIES + CONSTRAINTS)
def test_queries_are_constants_with_parameters_only(query: str) -> None:
    assert "{}" not in query
    assert "%s" not in query
    assert "{0" not in query
    assert "'" not in query
    assert '"' not in query


def test_constraints_make_every_label_unique_per_tenant() -> None:
    for label, key in (("Document", "id"), ("Chunk", "id"), ("Entity", "key")):
        assert any(
            f":{label})" in c and ".tenant_id, " in c and f".{key}) IS UNIQUE" in c
            for c in CONSTRAINTS
        ), label
    assert all("IF NOT EXISTS" in c for c in CONSTRAINTS)


async def test_writes_pass_input_as_parameters(
    repository: KnowledgeGraph, driver: RecordingDriver
) -> None:
    tenant, document = uuid.uuid4(), uuid.uuid4()
    hostile = "x'}) DETACH DELETE (n) //"
    driver.answers = [[], [{"written": 2}], [{"written": 1}]]

    await repository.upsert_document(tenant, document, hostile)
    written = await repository.add_chunks(
        tenant, document, [GraphChunk("c1", 0, hostile), GraphChunk("c2", 1, "two")]
    )
    linked = await repository.add_mentions(tenant, [Mention("c1", f"  ACME  {hostile}", "Org")])
    assert (written, linked) == (2, 1)

    (q1, p1, r1, db1), (q2, p2, _, _), (q3, p3, _, _) = driver.calls
    assert q1 == graph.UPSERT_DOCUMENT
    assert q2 == graph.ADD_CHUNKS
    assert q3 == graph.ADD_MENTIONS
    assert all(hostile not in query for query, *_ in driver.calls)
    assert p1 == {"tenant_id": str(tenant), "document_id": str(document), "title": hostile}
    assert p2["chunks"] == [
        {"id": "c1", "position": 0, "text": hostile},
        {"id": "c2", "position": 1, "text": "two"},
    ]
    assert p3["mentions"] == [
        {
            "chunk_id": "c1",
            "key": f"org:acme {hostile.casefold()}",
            "name": f"  ACME  {hostile}",
            "kind": "Org",
        }
    ]
    assert (r1, db1) == ("w", "knowledge")


async def test_delete_removes_the_document_then_orphaned_entities(
    repository: KnowledgeGraph, driver: RecordingDriver
) -> None:
    tenant, document = uuid.uuid4(), uuid.uuid4()
    await repository.delete_document(tenant, document)
    assert [call[0] for call in driver.calls] == [
        graph.DELETE_DOCUMENT,
        graph.DELETE_ORPHAN_ENTITIES,
    ]
    assert driver.calls[0][1] == {"tenant_id": str(tenant), "document_id": str(document)}
    assert driver.calls[1][1] == {"tenant_id": str(tenant)}


async def test_reads_route_to_readers_and_map_rows(
    repository: KnowledgeGraph, driver: RecordingDriver
) -> None:
    tenant, document = uuid.uuid4(), uuid.uuid4()
    driver.answers = [
        [{"name": "ACME", "kind": "org", "mentions": 3}],
        [{"chunk_id": "c1", "document_id": str(document), "text": "t", "entities": ["ACME"]}],
        [{"title": "Report", "chunks": 2, "entities": ["ACME"]}],
        [],
    ]
    entities = await repository.entities(tenant, limit=5)
    hits = await repository.chunks_mentioning(tenant, [Mention("", "Acme", "ORG")])
    summary = await repository.document_summary(tenant, document)
    missing = await repository.document_summary(tenant, uuid.uuid4())

    assert [(e.name, e.mentions) for e in entities] == [("ACME", 3)]
    assert hits[0].document_id == document
    assert hits[0].entities == ["ACME"]
    assert summary == DocumentGraph(
        document_id=document, title="Report", chunks=2, entities=["ACME"]
    )
    assert missing is None
    assert [call[2] for call in driver.calls] == ["r", "r", "r", "r"]
    assert driver.calls[0][1] == {"tenant_id": str(tenant), "limit": 5}
    assert driver.calls[1][1]["keys"] == ["org:acme"]


async def test_constraints_are_created_one_by_one(
    repository: KnowledgeGraph, driver: RecordingDriver
) -> None:
    await repository.ensure_constraints()
    assert driver.verified == 1
    assert [call[0] for call in driver.calls] == list(CONSTRAINTS)


async def test_tenant_must_be_a_uuid(repository: KnowledgeGraph) -> None:
    with pytest.raises(TypeError):
        await repository.entities("00000000-0000-0000-0000-000000000001")  # type: ignore[arg-type]


async def test_without_neo4j_uri_there_is_no_graph() -> None:
    assert create_neo4j(Settings()) is None
    error = GraphDisabledError()
    assert error.status == 503
    assert "NEO4J_URI" in error.detail


async def test_driver_takes_pool_settings_and_probe_fails_fast_when_unreachable() -> None:
    settings = Settings(
        neo4j_uri="bolt://127.0.0.1:9",
        neo4j_password="a-real-password",
        neo4j_max_pool_size=7,
        neo4j_connection_timeout_seconds=1,
    )
    repository = create_neo4j(settings)
    assert repository is not None
    config = repository.driver._pool.pool_config
    assert config.max_connection_pool_size == 7
    assert config.connection_timeout == 1
    with pytest.raises(Exception, match=r"(?i)connect|unavailable"):
        await repository.probe()
    await repository.close()
