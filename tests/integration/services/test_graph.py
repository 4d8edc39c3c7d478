"""The knowledge graph against a real Neo4j (see the `neo4j_settings` fixture for where from)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from switchyard.documents.graph import GraphChunk, KnowledgeGraph, Mention
from switchyard.services.neo4j import Neo4j
from switchyard.settings import Settings


@pytest.fixture
async def knowledge_graph(neo4j_settings: dict[str, str]) -> AsyncIterator[KnowledgeGraph]:
    neo4j = Neo4j.from_settings(Settings(**neo4j_settings))  # type: ignore[arg-type]
    await neo4j.probe()
    repository = KnowledgeGraph(neo4j)
    await repository.ensure_constraints()
    await repository.ensure_constraints()  # idempotent
    yield repository
    await neo4j.close()


async def test_documents_chunks_and_entities_per_tenant(knowledge_graph: KnowledgeGraph) -> None:
    tenant, other, document = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await knowledge_graph.upsert_document(tenant, document, "Quarterly report")
    await knowledge_graph.upsert_document(tenant, document, "Quarterly report v2")
    chunks = [
        GraphChunk(f"{document}:0", 0, "ACME hired Ada"),
        GraphChunk(f"{document}:1", 1, "ACME"),
    ]
    assert await knowledge_graph.add_chunks(tenant, document, chunks) == 2
    await knowledge_graph.add_mentions(
        tenant,
        [
            Mention(chunks[0].id, "ACME", "org"),
            Mention(chunks[0].id, "Ada", "person"),
            Mention(chunks[1].id, "acme", "org"),
        ],
    )
    entities = await knowledge_graph.entities(tenant)
    assert [(e.name, e.mentions) for e in entities] == [("ACME", 2), ("Ada", 1)]
    summary = await knowledge_graph.document_summary(tenant, document)
    assert summary is not None
    assert summary.title == "Quarterly report v2"
    assert summary.chunks == 2
    hits = await knowledge_graph.chunks_mentioning(tenant, [Mention("", "Ada", "person")])
    assert [h.chunk_id for h in hits] == [chunks[0].id]

    assert await knowledge_graph.entities(other) == []
    assert await knowledge_graph.document_summary(other, document) is None
    assert await knowledge_graph.add_chunks(other, document, chunks) == 0

    await knowledge_graph.delete_document(tenant, document)
    assert await knowledge_graph.entities(tenant) == []
    assert await knowledge_graph.document_summary(tenant, document) is None


async def test_a_tenants_nodes_go_with_its_deletion(knowledge_graph: KnowledgeGraph) -> None:
    tenant, other, document = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    chunks = [GraphChunk(f"{document}:0", 0, "ACME hired Ada")]
    for owner in (tenant, other):
        await knowledge_graph.upsert_document(owner, document, "Report")
        await knowledge_graph.add_chunks(owner, document, chunks)
        await knowledge_graph.add_mentions(owner, [Mention(chunks[0].id, "ACME", "org")])
    # Its tenant, document, chunk and entity nodes, a batch of one at a time.
    assert await knowledge_graph.drop_tenant(tenant, batch=1) == 4
    assert await knowledge_graph.document_summary(tenant, document) is None
    assert await knowledge_graph.entities(tenant) == []
    assert await knowledge_graph.drop_tenant(tenant) == 0
    assert [e.name for e in await knowledge_graph.entities(other)] == ["ACME"]
