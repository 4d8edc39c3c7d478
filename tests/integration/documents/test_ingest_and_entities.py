"""Ingestion's error handling (transient retried, permanent failed at once) and entity
extraction into the graph, with the LLM behind the local Zhipu fake."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from switchyard.api.app import create_app
from switchyard.documents import graph as graph_queries
from switchyard.documents.tasks import (
    INGEST_RETRY,
    DocumentInput,
    PermanentIngestError,
    TransientIngestError,
    ingest,
)
from switchyard.platform.registry import TaskContext
from switchyard.services.container import Services
from switchyard.services.neo4j import Neo4j
from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.accounts import Account
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.tasks import DELIVERY_LIMIT
from tests.unit.test_graph_queries import RecordingDriver

TEXT = (
    b"ACME hired Ada Lovelace in London to lead its new engineering group.\n\n"
    b"The London office of ACME opened in May with forty people on two floors."
)


@pytest.fixture
def app(
    make_settings: SettingsFactory, broker_url: str, tmp_path: Path, zhipu: FakeZhipu
) -> FastAPI:
    settings = make_settings(
        celery_broker_url=broker_url,
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        zhipuai_api_key=API_KEY,
        zhipuai_base_url=zhipu.base_url,
        zhipuai_retry_backoff_seconds=0.01,
        zhipuai_max_retries=0,
        embedding_provider="zhipu",
        chunk_size_chars=100,
        chunk_overlap_chars=0,
    )
    return create_app(settings)


async def run_ingest(services: Services, tenant: uuid.UUID, document_id: str, attempt: int) -> Any:
    context = TaskContext(
        services, tenant, uuid.uuid4(), attempt, logging.LoggerAdapter(logging.getLogger("t"), {})
    )
    return await ingest(DocumentInput(document_id=uuid.UUID(document_id)), context)


async def upload(client: httpx.AsyncClient, name: str, data: bytes, kind: str) -> str:
    accepted = await client.post("/api/v1/documents", files={"file": (name, data, kind)})
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["document"]["id"])


async def test_transient_errors_retry_then_fail_with_the_reason(
    app: FastAPI, client: httpx.AsyncClient, owner: Account, zhipu: FakeZhipu
) -> None:
    services: Services = app.state.gateway.services
    document_id = await upload(client, "notes.txt", TEXT, "text/plain")
    assert TransientIngestError in INGEST_RETRY.retry_on

    zhipu.fail_next(503, message="overloaded")
    with pytest.raises(TransientIngestError, match="overloaded"):
        await run_ingest(services, owner.tenant_id, document_id, attempt=1)
    document = (await client.get(f"/api/v1/documents/{document_id}")).json()
    assert document["status"] == "processing"  # another attempt will come

    zhipu.fail_next(503, message="still overloaded")
    with pytest.raises(TransientIngestError):
        await run_ingest(services, owner.tenant_id, document_id, INGEST_RETRY.max_retries + 1)
    document = (await client.get(f"/api/v1/documents/{document_id}")).json()
    assert document["status"] == "failed"
    assert document["error"].startswith(f"gave up after {INGEST_RETRY.max_retries + 1} attempts")
    assert "still overloaded" in document["error"]

    result = await run_ingest(services, owner.tenant_id, document_id, attempt=1)
    assert result["chunks"] == 2
    document = (await client.get(f"/api/v1/documents/{document_id}")).json()
    assert (document["status"], document["error"]) == ("ready", None)


async def test_permanent_errors_fail_at_once(
    app: FastAPI, client: httpx.AsyncClient, owner: Account
) -> None:
    services: Services = app.state.gateway.services
    document_id = await upload(client, "empty.md", b"   \n", "text/markdown")
    with pytest.raises(PermanentIngestError, match="no text"):
        await run_ingest(services, owner.tenant_id, document_id, attempt=1)
    assert PermanentIngestError not in INGEST_RETRY.retry_on
    document = (await client.get(f"/api/v1/documents/{document_id}")).json()
    assert (document["status"], document["error"]) == ("failed", "the document has no text")


async def test_entities_are_extracted_into_the_graph_after_ingestion(
    app: FastAPI, client: httpx.AsyncClient, owner: Account, zhipu: FakeZhipu
) -> None:
    services: Services = app.state.gateway.services
    driver = RecordingDriver()
    services.neo4j = Neo4j(driver)  # type: ignore[arg-type]
    document_id = await upload(client, "people.txt", TEXT, "text/plain")
    zhipu.reply = (
        'Here: [{"name": "ACME", "kind": "organisation"}, {"name": "London", "kind": "place"}]'
    )
    driver.answers = [[], [], [], [{"written": 2}], [{"written": 4}]]

    result = await run_ingest(services, owner.tenant_id, document_id, attempt=1)
    assert result == {"document_id": document_id, "chunks": 2, "entities": 4}
    queries = [call[0] for call in driver.calls]
    assert queries == [
        graph_queries.DELETE_DOCUMENT,
        graph_queries.DELETE_ORPHAN_ENTITIES,
        graph_queries.UPSERT_DOCUMENT,
        graph_queries.ADD_CHUNKS,
        graph_queries.ADD_MENTIONS,
    ]
    mentions = driver.calls[-1][1]["mentions"]
    assert {(m["chunk_id"], m["name"]) for m in mentions} == {
        (f"{document_id}:{i}", name) for i in (0, 1) for name in ("ACME", "London")
    }
    assert all(call[1]["tenant_id"] == str(owner.tenant_id) for call in driver.calls)
    entity_prompts = [r for r in zhipu.requests if r.path.endswith("/chat/completions")]
    assert len(entity_prompts) == 2
    assert "named entities" in entity_prompts[0].body["messages"][0]["content"]

    driver.answers = [[{"title": "People", "chunks": 2, "entities": ["London", "ACME"]}]]
    shown = await client.get(f"/api/v1/documents/{document_id}/graph")
    assert shown.status_code == 200
    assert shown.json() == {
        "document_id": document_id,
        "title": "People",
        "chunks": 2,
        "entities": ["ACME", "London"],
    }


async def test_ingestion_and_entities_are_queued_again_through_the_documents_routes(
    app: FastAPI, client: httpx.AsyncClient, owner: Account
) -> None:
    """documents.ingest and documents.extract_entities are internal (not runnable by POST
    /tasks/run): these routes, under documents:write, queue them for a document."""
    services: Services = app.state.gateway.services
    services.neo4j = Neo4j(RecordingDriver())  # type: ignore[arg-type]
    document_id = await upload(client, "people.txt", TEXT, "text/plain")
    pending = await client.post(f"/api/v1/documents/{document_id}/entities")
    assert pending.status_code == 409
    assert "pending" in pending.json()["detail"]
    busy = await client.post(f"/api/v1/documents/{document_id}/ingest")
    assert busy.status_code == 409  # being ingested already

    await run_ingest(services, owner.tenant_id, document_id, attempt=1)
    queued = await client.post(f"/api/v1/documents/{document_id}/entities")
    assert queued.status_code == 202, queued.text
    run = (await client.get(queued.headers["location"])).json()
    assert run["task"] == "documents.extract_entities"
    assert run["payload"] == {"document_id": document_id}

    key = await client.post(
        "/api/v1/api-keys", json={"name": "reader", "scopes": ["documents:read", "tasks:run"]}
    )
    reader = {"X-API-Key": key.json()["key"], "Authorization": ""}
    refused = await client.post(f"/api/v1/documents/{document_id}/entities", headers=reader)
    assert refused.status_code == 403
    assert "documents:write" in refused.json()["detail"]
    missing = await client.post(f"/api/v1/documents/{uuid.uuid4()}/entities")
    assert missing.status_code == 404

    again = await client.post(f"/api/v1/documents/{document_id}/ingest")
    assert again.status_code == 202, again.text
    rerun = (await client.get(again.headers["location"])).json()
    assert rerun["task"] == "documents.ingest"
    assert rerun["payload"] == {"document_id": document_id}
