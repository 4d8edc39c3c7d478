"""The documents API in process: uploads and their refusals, listing, local embeddings
(all-MiniLM-L6-v2, no API key) driving search, and answers needing the LLM."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from switchyard.api.app import create_app
from switchyard.documents.tasks import DocumentInput, ingest
from switchyard.platform.registry import TaskContext
from switchyard.services.container import Services
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT

HANDBOOK = """# Office handbook

## Lunch
The cafeteria on the second floor serves soup and sandwiches from noon until two.

## Security
Badges must be worn at all times. Lost badges are replaced at reception.

## Travel
Train tickets are booked through the travel desk at least a week ahead.
"""


@pytest.fixture
def app(make_settings: SettingsFactory, broker_url: str, tmp_path: Path) -> FastAPI:
    settings = make_settings(
        celery_broker_url=broker_url,
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        document_max_bytes=4096,
        chunk_size_chars=120,
        chunk_overlap_chars=0,
    )
    return create_app(settings)


async def upload(client: httpx.AsyncClient, name: str, data: bytes, kind: str) -> httpx.Response:
    return await client.post("/api/v1/documents", files={"file": (name, data, kind)})


async def ingest_now(services: Services, tenant_id: uuid.UUID, document_id: str) -> Any:
    """What the worker does, in this process (the queued run stays for a worker to skip)."""
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    context = TaskContext(services, tenant_id, uuid.uuid4(), 1, log)
    return await ingest(DocumentInput(document_id=uuid.UUID(document_id)), context)


async def test_local_embeddings_find_the_right_passage(
    app: FastAPI, client: httpx.AsyncClient, owner: Account
) -> None:
    accepted = await upload(client, "handbook.md", HANDBOOK.encode(), "text/markdown")
    assert accepted.status_code == 202, accepted.text
    document_id = accepted.json()["document"]["id"]
    services: Services = app.state.gateway.services
    assert services.embedder.name == "local-minilm-l6-v2"
    result = await ingest_now(services, owner.tenant_id, document_id)
    assert result["chunks"] == 3

    document = (await client.get(f"/api/v1/documents/{document_id}")).json()
    assert (document["status"], document["chunk_count"]) == ("ready", 3)
    for question, expected in (
        ("Where can I get something to eat at midday?", "cafeteria"),
        ("I lost my ID card", "badges"),
        ("How do I buy a railway ticket?", "travel desk"),
    ):
        found = await client.post("/api/v1/search", json={"query": question, "top_k": 1})
        assert expected in found.json()["hits"][0]["snippet"].lower(), (question, found.json())

    # Re-ingesting replaces the chunks.
    await ingest_now(services, owner.tenant_id, document_id)
    assert await services.vectors.count(owner.tenant_id) == 3

    # Without an LLM there is retrieval but no answer, and the problem says why.
    answer = await client.post("/api/v1/answer", json={"question": "lunch?"})
    assert answer.status_code == 503
    assert "ZHIPUAI_API_KEY" in answer.json()["detail"]


async def test_refused_uploads_leave_nothing_behind(
    app: FastAPI, client: httpx.AsyncClient, owner: Account
) -> None:
    services: Services = app.state.gateway.services
    too_big = await upload(client, "big.txt", b"x" * 5000, "text/plain")
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "payload_too_large"
    wrong = await upload(client, "slides.pptx", b"PK..", "application/vnd.ms-powerpoint")
    assert wrong.status_code == 415
    assert wrong.headers["content-type"] == "application/problem+json"
    missing = await client.post("/api/v1/documents", data={"title": "no file"})
    assert missing.status_code == 422
    assert [e["field"] for e in missing.json()["errors"]] == ["body.file"]
    assert await services.objects.list(owner.tenant_id) == []
    assert (await client.get("/api/v1/documents")).json()["items"] == []


async def test_upload_with_the_broker_down_is_503_and_taken_back(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(
        celery_broker_url="amqp://guest:guest@127.0.0.1:1//",
        broker_publish_timeout_seconds=1,
        var_dir=tmp_path,
    )
    app = create_app(settings)
    async with running(app) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        refused = await upload(client, "a.txt", b"some text", "text/plain")
        listed = (await client.get("/api/v1/documents")).json()
        objects = await app.state.gateway.services.objects.list(account.tenant_id)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert listed["items"] == []
    assert objects == []


async def test_listing_filters_and_pages(client: httpx.AsyncClient, owner: Account) -> None:
    ids = []
    for n in range(5):
        accepted = await upload(client, f"note-{n}.txt", f"note {n}".encode(), "text/plain")
        ids.append(accepted.json()["document"]["id"])
    first = (await client.get("/api/v1/documents", params={"limit": 2})).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    second = (
        await client.get("/api/v1/documents", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [d["id"] for d in second["items"]] == ids[::-1][2:4]
    pending = (await client.get("/api/v1/documents", params={"status": "pending"})).json()
    assert len(pending["items"]) == 5
    ready = (await client.get("/api/v1/documents", params={"status": "ready"})).json()
    assert ready["items"] == []
    bad = await client.get("/api/v1/documents", params={"cursor": "nope"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.cursor"
    titled = (await client.get(f"/api/v1/documents/{ids[0]}")).json()
    assert (titled["title"], titled["filename"], titled["size_bytes"]) == (
        "note-0",
        "note-0.txt",
        6,
    )


async def test_ids_not_the_tenants_are_404_before_anything_else(
    app: FastAPI, client: httpx.AsyncClient, owner: Account
) -> None:
    """Delete, graph and entity extraction of an unknown or another tenant's document answer
    404 (never 204, never the 503 of a graph this deployment lacks); for one's own document
    without a graph, extraction is refused up front with that 503 instead of a run that could
    only dead-letter."""
    accepted = await upload(client, "notes.txt", b"Ada works in Porto.", "text/plain")
    mine = accepted.json()["document"]["id"]
    services: Services = app.state.gateway.services
    await ingest_now(services, owner.tenant_id, mine)
    other = await sign_up(client, "Other")
    theirs = {"Authorization": f"Bearer {other.access_token}"}
    for document_id, headers in ((mine, theirs), (str(uuid.uuid4()), dict(client.headers))):
        for method, path in (
            ("DELETE", f"/api/v1/documents/{document_id}"),
            ("GET", f"/api/v1/documents/{document_id}/graph"),
            ("POST", f"/api/v1/documents/{document_id}/entities"),
        ):
            answer = await client.request(method, path, headers=headers)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
    # Still there for its owner; without Neo4j, graph and extraction say why at once.
    assert (await client.get(f"/api/v1/documents/{mine}")).status_code == 200
    for method, path in (("GET", "graph"), ("POST", "entities")):
        answer = await client.request(method, f"/api/v1/documents/{mine}/{path}")
        assert answer.status_code == 503, answer.text
        assert "NEO4J_URI" in answer.json()["detail"]
    runs = (
        await client.get("/api/v1/tasks/", params={"task": "documents.extract_entities"})
    ).json()
    assert runs["items"] == []
    deleted = await client.delete(f"/api/v1/documents/{mine}")
    assert deleted.status_code == 204
    assert (await client.delete(f"/api/v1/documents/{mine}")).status_code == 404
