"""The flagship flow across processes, as the image would run it: a gateway, a worker and beat
as `switchyard run` subprocesses; MinIO (moto's S3 server), a Chroma server and the Zhipu API
(a local fake of it) as backing services."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from switchyard.services.objects import MinioObjectStore
from switchyard.services.vectors import VectorStore
from switchyard.settings import Settings
from tests.fakes.pdf import make_pdf, make_slow_pdf
from tests.fakes.zhipu import FakeZhipu
from tests.fixtures.accounts import PASSWORD
from tests.fixtures.backing import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.fixtures.messaging import own_vhost
from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import free_port
from tests.fixtures.stack import product_env

pytestmark = pytest.mark.e2e

MAX_BYTES = 1_000_000
EXTRACT_LIMIT = 8
MARKDOWN = """# Lisbon office handbook

The Lisbon office opens at eight in the morning. Visitors sign in at the front desk.

## Parking

Parking for bicycles is in the courtyard behind the building.
"""
PDF_PAGES = [
    ["Quarterly report for the Porto warehouse.", "Porto shipments grew by twelve percent."],
    ["The Porto warehouse hired three new forklift drivers."],
]


@pytest.fixture(scope="module")
def pipeline_broker() -> Iterator[str]:
    with own_vhost() as url:
        yield url


@pytest.fixture
def stack(
    start_role: Callable[..., RunningRole],
    tmp_path: Path,
    database_url: URL,
    redis_url: str,
    pipeline_broker: str,
    s3_endpoint: str,
    chroma_server: tuple[str, int],
    zhipu: FakeZhipu,
) -> dict[str, Any]:
    env = product_env(
        database_url=database_url,
        redis_url=redis_url,
        broker=pipeline_broker,
        s3_endpoint=s3_endpoint,
        chroma_server=chroma_server,
        zhipu=zhipu,
        name="pipeline",
        DOCUMENT_MAX_BYTES=str(MAX_BYTES),
        DOCUMENT_EXTRACT_TIMEOUT_SECONDS=str(EXTRACT_LIMIT),
        CHUNK_SIZE_CHARS="120",
        CHUNK_OVERLAP_CHARS="20",
    )
    bucket = env["MINIO_BUCKET"]
    port = free_port()
    gateway = start_role("api-gateway", port, **env)
    worker = start_role("worker", **env, VAR_DIR=str(tmp_path / "worker"))
    beat = start_role("beat", **env, VAR_DIR=str(tmp_path / "beat"))
    gateway.wait_healthy()
    worker.wait_heartbeat(tmp_path / "worker" / "worker.heartbeat")
    beat.wait_heartbeat(tmp_path / "beat" / "beat.heartbeat")
    settings = Settings(
        _env_file=None,
        minio_endpoint=s3_endpoint,
        minio_access_key=S3_ACCESS_KEY,
        minio_secret_key=S3_SECRET_KEY,
        minio_region="us-east-1",
        minio_bucket=bucket,
        chroma_host=chroma_server[0],
        chroma_port=chroma_server[1],
    )
    return {"api": f"{gateway.base_url}/api/v1", "settings": settings, "worker": worker}


def account(api: str) -> dict[str, str]:
    email = f"pipeline-{uuid.uuid4().hex[:10]}@example.com"
    registered = httpx.post(
        f"{api}/auth/register", json={"email": email, "password": PASSWORD, "tenant_name": "T"}
    )
    assert registered.status_code == 201, registered.text
    tokens = httpx.post(f"{api}/auth/login", json={"email": email, "password": PASSWORD}).json()
    return {
        "Authorization": f"Bearer {tokens['access_token']}",
        "tenant": registered.json()["tenant"]["id"],
    }


def upload(api: str, auth: dict[str, str], name: str, data: bytes, kind: str) -> httpx.Response:
    return httpx.post(
        f"{api}/documents",
        files={"file": (name, data, kind)},
        data={"title": name.split(".", maxsplit=1)[0].title()},
        headers={"Authorization": auth["Authorization"]},
        timeout=30,
    )


def wait_for_document(api: str, auth: dict[str, str], document_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    document: dict[str, Any] = {}
    while time.monotonic() < deadline:
        document = httpx.get(
            f"{api}/documents/{document_id}", headers={"Authorization": auth["Authorization"]}
        ).json()
        if document["status"] in ("ready", "failed"):
            return document
        time.sleep(0.2)
    raise AssertionError(f"document not ingested within 60 s: {document}")


def sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], "message"
    for line in response.text.splitlines():
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.removeprefix("data:"))))
    return events


def object_keys(settings: Settings, tenant: uuid.UUID) -> list[str]:
    async def keys() -> list[str]:
        objects = MinioObjectStore.from_settings(settings)
        found = [o.key for o in await objects.list(tenant)]
        await objects.close()
        return found

    return asyncio.run(keys())


def vector_documents(settings: Settings, tenant: uuid.UUID) -> tuple[int, set[uuid.UUID]]:
    """How many chunks the tenant has in the vector store, and of which documents."""

    async def look() -> tuple[int, set[uuid.UUID]]:
        vectors = VectorStore.from_settings(settings, space="zhipu-embedding-3")
        count = await vectors.count(tenant)
        matches = await vectors.query(tenant, [0.1] * 64, top_k=100) if count else []
        await vectors.close()
        return count, {m.document_id for m in matches}

    return asyncio.run(look())


# Its own waits (ingestion, answers) add up past the suite's 120 s when it shares two cores
# with the rest of the suite; about 6 s alone here.
@pytest.mark.timeout(300)
def test_upload_ingest_search_answer_isolate_delete(
    stack: dict[str, Any], zhipu: FakeZhipu
) -> None:
    api = stack["api"]
    a, b = account(api), account(api)
    headers_a = {"Authorization": a["Authorization"]}
    headers_b = {"Authorization": b["Authorization"]}

    markdown = upload(api, a, "handbook.md", MARKDOWN.encode(), "text/markdown")
    pdf = upload(api, a, "report.pdf", make_pdf(PDF_PAGES), "application/pdf")
    assert markdown.status_code == pdf.status_code == 202, markdown.text
    accepted = markdown.json()
    assert accepted["document"]["status"] == "pending"
    assert accepted["document"]["content_type"] == "text/markdown"
    assert markdown.headers["location"] == f"/api/v1/documents/{accepted['document']['id']}"
    ids = [markdown.json()["document"]["id"], pdf.json()["document"]["id"]]

    documents = [wait_for_document(api, a, document_id) for document_id in ids]
    assert [d["status"] for d in documents] == ["ready", "ready"], documents
    assert all(d["chunk_count"] >= 2 for d in documents)
    assert documents[0]["run_id"] == accepted["task_id"]
    run = httpx.get(f"{api}/tasks/{accepted['task_id']}", headers=headers_a).json()
    assert run["task"] == "documents.ingest"
    assert run["state"] == "succeeded"
    assert run["result"]["chunks"] == documents[0]["chunk_count"]

    found = httpx.post(
        f"{api}/search",
        json={"query": "Porto warehouse forklift drivers", "top_k": 3},
        headers=headers_a,
        timeout=60,
    ).json()
    assert found["hits"][0]["document_id"] == ids[1]
    assert "forklift" in found["hits"][0]["snippet"]
    assert found["hits"][0]["title"] == "Report"
    scores = [hit["score"] for hit in found["hits"]]
    assert scores == sorted(scores, reverse=True)
    only_md = httpx.post(
        f"{api}/search",
        json={"query": "Porto warehouse", "top_k": 5, "document_ids": [ids[0]]},
        headers=headers_a,
        timeout=60,
    ).json()
    assert {hit["document_id"] for hit in only_md["hits"]} == {ids[0]}

    answered = httpx.post(
        f"{api}/answer", json={"question": "When does the Lisbon office open?"}, headers=headers_a
    ).json()
    assert answered["citations"], answered
    assert answered["citations"][0]["document_id"] == ids[0]
    assert "Lisbon office opens" in answered["answer"]  # the fake echoes the context it got
    assert zhipu.requests[-1].body["messages"][0]["role"] == "system"

    streamed = httpx.post(
        f"{api}/answer",
        json={"question": "Where is bicycle parking?", "stream": True, "top_k": 2},
        headers=headers_a,
        timeout=30,
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse(streamed)
    names = [name for name, _ in events]
    assert names[-2:] == ["citations", "done"]
    assert set(names[:-2]) == {"delta"}
    assert "courtyard" in "".join(data["content"] for name, data in events if name == "delta")
    assert events[-2][1]["citations"][0]["document_id"] == ids[0]

    # Tenant B sees none of it.
    assert httpx.get(f"{api}/documents", headers=headers_b).json()["items"] == []
    assert httpx.get(f"{api}/documents/{ids[0]}", headers=headers_b).status_code == 404
    assert httpx.get(f"{api}/documents/{ids[0]}/content", headers=headers_b).status_code == 404
    empty = httpx.post(f"{api}/search", json={"query": "Porto warehouse"}, headers=headers_b)
    assert empty.json()["hits"] == []
    assert httpx.delete(f"{api}/documents/{ids[0]}", headers=headers_b).status_code == 404
    assert wait_for_document(api, a, ids[0])["status"] == "ready"

    # The original comes back as it was uploaded.
    content = httpx.get(f"{api}/documents/{ids[0]}/content", headers=headers_a)
    assert content.content == MARKDOWN.encode()
    assert content.headers["content-type"].startswith("text/markdown")

    # Refusals leave nothing behind.
    too_big = upload(api, a, "big.txt", b"x" * (MAX_BYTES + 1), "text/plain")
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == "application/problem+json"
    image = upload(api, a, "photo.png", b"\x89PNG....", "image/png")
    assert image.status_code == 415
    listed = httpx.get(f"{api}/documents", headers=headers_a).json()["items"]
    assert sorted(d["id"] for d in listed) == sorted(ids)
    tenant_a = uuid.UUID(a["tenant"])
    assert len(object_keys(stack["settings"], tenant_a)) == 2

    # A permanent failure is reported on the document and not retried.
    broken = upload(api, a, "broken.pdf", b"%PDF-1.4 not really", "application/pdf")
    failed = wait_for_document(api, a, broken.json()["document"]["id"])
    assert failed["status"] == "failed"
    assert "cannot be read" in failed["error"]
    failed_run = httpx.get(f"{api}/tasks/{broken.json()['task_id']}", headers=headers_a).json()
    assert failed_run["state"] == "failed"
    assert failed_run["attempts"] == 1

    # Re-ingesting (POST /documents/{id}/ingest: documents.ingest is internal, not runnable
    # by POST /tasks/run) replaces chunks instead of adding to them.
    before, _ = vector_documents(stack["settings"], tenant_a)
    rerun = httpx.post(f"{api}/documents/{ids[0]}/ingest", headers=headers_a)
    assert rerun.status_code == 202
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{api}/tasks/{rerun.json()['task_id']}", headers=headers_a).json()["state"]
        not in ("succeeded", "failed")
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert vector_documents(stack["settings"], tenant_a)[0] == before

    # Delete: object, vectors and row go; the id is unknown after.
    for document_id in ids:
        assert httpx.delete(f"{api}/documents/{document_id}", headers=headers_a).status_code == 204
        assert httpx.delete(f"{api}/documents/{document_id}", headers=headers_a).status_code == 404
        assert httpx.get(f"{api}/documents/{document_id}", headers=headers_a).status_code == 404
    assert vector_documents(stack["settings"], tenant_a) == (0, set())
    assert object_keys(stack["settings"], tenant_a) == [f"documents/{failed['id']}/original"]
    gone = httpx.post(f"{api}/search", json={"query": "Porto warehouse"}, headers=headers_a)
    assert gone.json()["hits"] == []


def test_a_pdf_that_parses_for_minutes_fails_at_its_limit_while_other_runs_go_on(
    stack: dict[str, Any],
) -> None:
    """5,000 pages sharing one 10 MB content stream: pypdf parses it again for every page.
    Extraction runs in the CPU pool: the job's process is killed at its limit, the document
    fails saying so, and the worker's loop serves an echo run meanwhile."""
    api = stack["api"]
    a = account(api)
    headers = {"Authorization": a["Authorization"]}
    bomb = make_slow_pdf(5000, 10_000_000)
    assert len(bomb) < MAX_BYTES
    accepted = upload(api, a, "slow.pdf", bomb, "application/pdf")
    assert accepted.status_code == 202, accepted.text
    document_id = accepted.json()["document"]["id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{api}/documents/{document_id}", headers=headers).json()["status"] != (
        "processing"
    ):
        assert time.monotonic() < deadline, "ingestion did not start"
        time.sleep(0.1)
    echo = httpx.post(
        f"{api}/tasks/run",
        json={"task": "system.echo", "payload": {"message": "still serving"}},
        headers=headers,
    ).json()["task_id"]
    while True:
        served = httpx.get(f"{api}/tasks/{echo}", headers=headers).json()
        if served["state"] == "succeeded":
            break
        assert time.monotonic() < deadline, f"echo did not run beside the extraction: {served}"
        time.sleep(0.1)
    failed = wait_for_document(api, a, document_id)
    assert failed["status"] == "failed"
    assert f"text extraction ran past its limit of {EXTRACT_LIMIT} s" in failed["error"]
    run = httpx.get(f"{api}/tasks/{accepted.json()['task_id']}", headers=headers).json()
    assert run["state"] == "failed"
    assert run["attempts"] == 1
    # The echo ran beside the extraction, not after it (from the ledger, not a poll's timing).
    finished = datetime.fromisoformat(served["finished_at"])
    assert finished < datetime.fromisoformat(run["finished_at"])
