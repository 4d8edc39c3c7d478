"""`GET /api/v1/usage` in process, on the real PostgreSQL: what a tenant's uploads, ingestion
(local embeddings), searches and deletions used, this month and by day, for its admins; a
second tenant sees only its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from switchyard.api.app import create_app
from switchyard.services.container import Services
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT
from tests.integration.documents.test_documents_api import HANDBOOK, ingest_now, upload


@pytest.fixture
def app(make_settings: SettingsFactory, broker_url: str, tmp_path: Path) -> FastAPI:
    settings = make_settings(
        celery_broker_url=broker_url,
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        chunk_size_chars=120,
        chunk_overlap_chars=0,
    )
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


async def report(client: httpx.AsyncClient, account: Account, **params: str) -> dict[str, Any]:
    answer = await client.get("/api/v1/usage", params=params, headers=account.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def totals(body: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(t["meter"], t["subject"]): t["quantity"] for t in body["totals"]}


async def until_counted(
    client: httpx.AsyncClient, account: Account, counted: dict[tuple[str, str], int]
) -> dict[str, Any]:
    """Counted uses (searches, local embeddings) are written within a second: the report
    once it holds `counted`."""
    deadline = time.monotonic() + 10
    while True:
        body = await report(client, account)
        if counted.items() <= totals(body).items():
            return body
        assert time.monotonic() < deadline, f"not {counted} within 10 s: {body}"
        await asyncio.sleep(0.1)


async def test_a_tenants_uploads_ingestion_and_searches_are_in_its_report(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ada = await sign_up(client, "Metered")
    other = await sign_up(client, "Elsewhere")
    client.headers.update(ada.headers)
    empty = await report(client, ada)
    assert empty["totals"] == []
    assert empty["stocks"] == {"documents": 0, "stored.bytes": 0}

    kept = await upload(client, "handbook.md", HANDBOOK.encode(), "text/markdown")
    dropped = await upload(client, "note.txt", b"one short note", "text/plain")
    assert {kept.status_code, dropped.status_code} == {202}
    assert (await report(client, ada))["stocks"] == {
        "documents": 2,
        "stored.bytes": len(HANDBOOK.encode()) + len(b"one short note"),
    }
    deleted = await client.delete(f"/api/v1/documents/{dropped.json()['document']['id']}")
    assert deleted.status_code == 204
    assert (await report(client, ada))["stocks"] == {
        "documents": 1,
        "stored.bytes": len(HANDBOOK.encode()),
    }

    services: Services = app.state.gateway.services
    ingested = await ingest_now(services, ada.tenant_id, kept.json()["document"]["id"])
    texts = ("embedding.texts", "local-minilm-l6-v2")  # the local embedder counts texts
    await until_counted(client, ada, {texts: ingested["chunks"]})
    searched = await client.post("/api/v1/search", json={"query": "lunch", "top_k": 1})
    assert searched.status_code == 200
    # The query: one text more, one search.
    # Each upload's ingestion run, counted as the submission accepted it.
    accepted = ("run.accepted", "documents.ingest")
    body = await until_counted(
        client, ada, {texts: ingested["chunks"] + 1, ("search.queries", "search"): 1, accepted: 2}
    )
    today = datetime.now(UTC).date().isoformat()
    assert {(d["day"], d["meter"]) for d in body["daily"]} == {
        (today, "embedding.texts"),
        (today, "run.accepted"),
        (today, "search.queries"),
    }

    start = datetime.fromisoformat(body["period_start"])
    assert (start.day, start.hour, start.utcoffset()) == (1, 0, datetime.now(UTC).utcoffset())

    # Another tenant's report holds none of it; a past month holds nothing.
    theirs = await report(client, other)
    assert theirs["totals"] == []
    assert theirs["stocks"] == {"documents": 0, "stored.bytes": 0}
    assert (await report(client, ada, month="2001-01"))["totals"] == []


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "26-01", "2026-00"])
async def test_a_month_not_yyyy_mm_is_422_naming_it(client: httpx.AsyncClient, month: str) -> None:
    ada = await sign_up(client, "Months")
    answer = await client.get("/api/v1/usage", params={"month": month}, headers=ada.headers)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "query.month"
