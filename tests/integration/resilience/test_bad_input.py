"""The bad-input catalogue: what a client can throw at the API is answered 4xx problem+json
naming the field (never 500, never a stack trace), and what is accepted is stored and given
back exactly as sent.

Also covered elsewhere: forged, expired, `alg: none` and wrong-audience tokens
(tests/integration/auth/test_sign_up_and_tokens.py), tokens of a suspended tenant
(test_api_keys_and_tenants.py), negative and enormous `countdown`
(tests/integration/tasks/test_tasks_api.py), oversized JSON bodies with and without a length
(tests/integration/api/test_errors.py), zip-bomb-like PDFs (tests/unit/documents)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT

PROBLEM = "application/problem+json"
UPLOAD_LIMIT = 2048
INJECTIONS = [
    "'; DROP TABLE task_runs; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM tenants WHERE ('1'='1",
    "MATCH (n) DETACH DELETE n",
    "'}) MATCH (n) DETACH DELETE n //",
    "$$; SELECT pg_sleep(10); $$",
    "{{7*7}} ${7*7} <script>alert(1)</script>",
]
UNICODE = [
    "Zürich — 東京 — القاهرة",  # accents, CJK, right-to-left
    "🚀👩🏽‍💻 emoji with joiners",
    "e\u0301 combining, \u200b zero width, \U0001d518 astral",
]


@pytest.fixture(scope="module")
async def app(
    make_settings: SettingsFactory, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> FastAPI:
    """One gateway for the module (its embedding model loads once); each test signs up a
    tenant of its own."""
    return create_app(
        make_settings(
            celery_broker_url=broker_url,
            task_delivery_limit=DELIVERY_LIMIT,  # the session's queues are declared so
            document_max_bytes=UPLOAD_LIMIT,
            var_dir=tmp_path_factory.mktemp("bad-input"),
            max_request_body_bytes=64 * 1024,
        )
    )


@pytest.fixture(scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> AsyncIterator[Account]:
    account = await sign_up(client)
    client.headers.update(account.headers)
    yield account
    for name in account.headers:  # the next test starts without them
        client.headers.pop(name, None)


def is_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert "Traceback" not in answer.text
    problem: dict[str, Any] = answer.json()
    return problem


def fields(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem.get("errors") or []]


RUN = {"task": "system.echo", "payload": {"message": "ok"}}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        (
            "POST",
            "/api/v1/tasks/run",
            {**RUN, "payload": {"message": "a\x00b"}},
            "body.payload.message",
        ),
        ("POST", "/api/v1/tasks/run", {**RUN, "payload": {"k\x00": "x"}}, "body.payload.k?"),
        ("POST", "/api/v1/tasks/run", {"task": "system.echo\x00"}, "body.task"),
        (
            "POST",
            "/api/v1/tasks/register",
            {"name": "nul-in-payload", "task": "system.echo", "payload": {"message": ["\x00"]}},
            "body.payload.message.0",
        ),
        ("POST", "/api/v1/api-keys", {"name": "key\x00", "scopes": ["tasks:read"]}, "body.name"),
        ("PATCH", "/api/v1/tenants/current", {"name": "Acme\x00"}, "body.name"),
        (
            "POST",
            "/api/v1/data-sources",
            {"name": "d\x00", "url": "postgresql://h/db"},
            "body.name",
        ),
        ("POST", "/api/v1/search", {"query": "lunch\x00"}, "body.query"),
        ("GET", "/api/v1/tasks/?task=echo%00", None, "query.task"),
        ("GET", "/api/v1/tasks/definitions/na%00me", None, "path"),
    ],
)
async def test_nul_characters_are_refused_naming_the_field(
    client: httpx.AsyncClient, owner: Account, method: str, path: str, body: Any, field: str
) -> None:
    answer = await client.request(method, path, json=body)
    problem = is_problem(answer, 422)
    assert fields(problem) == [field]
    assert problem["errors"][0]["type"] == "string_nul"
    assert (await client.get("/api/v1/tasks/")).json()["items"] == []  # nothing was stored


async def test_a_nul_in_an_upload_title_or_file_name_is_refused(
    client: httpx.AsyncClient, owner: Account
) -> None:
    files = {"file": ("notes.txt", b"lunch at noon", "text/plain")}
    titled = await client.post("/api/v1/documents", files=files, data={"title": "a\x00"})
    assert fields(is_problem(titled, 422)) == ["body.title"]
    # httpx escapes a NUL in a file name; a hand-made body carries it as it is.
    raw = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="no\x00tes.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nlunch at noon\r\n--b--\r\n"
    )
    named = await client.post(
        "/api/v1/documents",
        content=raw,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert fields(is_problem(named, 422)) == ["body.file"]
    assert (await client.get("/api/v1/documents")).json()["items"] == []


@pytest.mark.parametrize("text", INJECTIONS + UNICODE)
async def test_free_text_is_stored_and_returned_verbatim(
    client: httpx.AsyncClient, owner: Account, engine: AsyncEngine, text: str
) -> None:
    """Injection strings and any Unicode in every free-text field: kept as data, never run."""
    run = await client.post("/api/v1/tasks/run", json={**RUN, "payload": {"message": text}})
    assert run.status_code == 202, run.text
    stored_run = (await client.get(f"/api/v1/tasks/{run.json()['task_id']}")).json()
    assert stored_run["payload"] == {"message": text}

    definition = await client.post(
        "/api/v1/tasks/register",
        json={
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "task": "system.echo",
            "payload": {"message": text},
        },
    )
    assert definition.status_code == 201, definition.text
    assert definition.json()["payload"] == {"message": text}

    key = await client.post("/api/v1/api-keys", json={"name": text, "scopes": ["tasks:read"]})
    assert key.status_code == 201, key.text
    assert key.json()["name"] == text
    assert text in {item["name"] for item in (await client.get("/api/v1/api-keys")).json()}

    tenant = await client.patch("/api/v1/tenants/current", json={"name": text})
    assert tenant.status_code == 200, tenant.text
    assert (await client.get("/api/v1/tenants/current")).json()["name"] == text

    source = await client.post(
        "/api/v1/data-sources",
        json={"name": text, "url": "postgresql://crm:pw@crm.example.com/crm"},
    )
    assert source.status_code == 201, source.text
    assert (await client.get(f"/api/v1/data-sources/{source.json()['id']}")).json()["name"] == text

    document = await client.post(
        "/api/v1/documents",
        files={"file": ("notes.txt", b"lunch at noon", "text/plain")},
        data={"title": text},
    )
    assert document.status_code == 202, document.text
    listed = (await client.get("/api/v1/documents")).json()["items"]
    assert text in {item["title"] for item in listed}

    search = await client.post("/api/v1/search", json={"query": text})
    assert search.status_code == 200, search.text
    assert search.json()["query"] == text

    async with engine.connect() as connection:  # and every table is still there
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    assert {"task_runs", "tenants", "api_keys", "knowledge_documents"} <= set(tables)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"task": "system.echo", "payload": {', "application/json", 422),  # cut short
        (b"[" * 30_000 + b"]" * 30_000, "application/json", 422),  # nested past the limit
        (b'{"task": "system.echo"} trailing', "application/json", 422),
        (b"\xff\xfe not utf-8", "application/json", 422),
        (b"task=system.echo", "text/plain", 422),
        (b"task=system.echo", "application/x-www-form-urlencoded", 422),
        (b"<run task='system.echo'/>", "application/xml", 422),
        (b"", "application/json", 422),
    ],
)
async def test_malformed_bodies_and_wrong_content_types_are_4xx_problems(
    client: httpx.AsyncClient, owner: Account, body: bytes, content_type: str, status: int
) -> None:
    answer = await client.post(
        "/api/v1/tasks/run", content=body, headers={"content-type": content_type}
    )
    problem = is_problem(answer, status)
    if status == 422:
        assert any(field.startswith("body") for field in fields(problem)), problem


async def test_a_huge_json_body_is_413_before_it_is_parsed(
    client: httpx.AsyncClient, owner: Account
) -> None:
    huge = json.dumps({**RUN, "payload": {"message": "x" * 100_000}})
    problem = is_problem(await client.post("/api/v1/tasks/run", content=huge), 413)
    assert "65536 bytes" in problem["detail"]


async def test_page_sizes_out_of_range_are_422_on_every_list(
    client: httpx.AsyncClient, owner: Account
) -> None:
    """Every operation with a `limit` query parameter, from the OpenAPI document."""
    spec = (await client.get("/openapi.json")).json()
    lists = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "limit" and parameter["in"] == "query":
                    lists.append((method, path, parameter["schema"]))
    assert len(lists) >= 4
    checked = 0
    for method, path, schema in lists:
        if (await client.request(method, path)).status_code in (403, 503):
            continue  # superusers only, or the graph without Neo4j: refused before any parameter
        for value in (schema["minimum"] - 1, schema["maximum"] + 1, -(10**30), "ten"):
            answer = await client.request(method, path, params={"limit": value})
            assert fields(is_problem(answer, 422)) == ["query.limit"], (path, value)
        checked += 1
    assert checked >= 3  # runs, dead letters, documents (and more as lists are added)


async def test_an_oversized_upload_is_413_without_reading_the_body(
    client: httpx.AsyncClient, owner: Account
) -> None:
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 64 MB offered
            pulled += 1
            yield b"x" * 65536

    answer = await client.post(
        "/api/v1/documents",
        content=body(),
        headers={
            "content-type": "multipart/form-data; boundary=b",
            "content-length": str(1000 * 65536),
        },
    )
    is_problem(answer, 413)
    assert pulled <= 1  # refused on the declared length, before the body was read


def raw_json(client: httpx.AsyncClient, path: str, text: str) -> Any:
    """A body as written, so values json.dumps would not produce (1e400, NaN) reach the API."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"task": "system.echo", "payload": {"message": "m"}, "countdown": 1e400}', "countdown"),
        (
            '{"task": "system.echo", "payload": {"message": "m"}, "countdown": Infinity}',
            "countdown",
        ),
        ('{"task": "system.echo", "payload": {"message": "m"}, "countdown": NaN}', "countdown"),
        ('{"task": "system.echo", "payload": {"message": "m"}, "countdown": 1e300}', "countdown"),
        ('{"task": "system.echo", "payload": {"message": "m"}, "countdown": 9e13}', "countdown"),
        (
            '{"task": "system.echo", "payload": {"message": "m"}, '
            '"eta": "0001-01-01T00:00:00+14:00"}',
            "eta",
        ),
        (
            '{"task": "system.echo", "payload": {"message": "m"}, '
            '"eta": "9999-12-31T23:59:59-14:00"}',
            "eta",
        ),
        ('{"task": "system.echo", "payload": {"message": "m", "n": 1e400}}', "payload.n"),
        ('{"task": "system.echo", "payload": {"message": "m", "n": [NaN]}}', "payload.n.0"),
        ('{"task": "system.echo", "payload": {"message": "m", "n": -Infinity}}', "payload.n"),
    ],
)
async def test_numbers_and_dates_out_of_range_are_refused_naming_the_field(
    client: httpx.AsyncClient, owner: Account, body: str, field: str
) -> None:
    problem = is_problem(await raw_json(client, "/api/v1/tasks/run", body), 422)
    assert any(name.startswith(f"body.{field}") for name in fields(problem)), problem
    assert (await client.get("/api/v1/tasks/")).json()["items"] == []


@pytest.mark.parametrize("depth", [65, 900, 30_000])
async def test_deeply_nested_json_is_refused(
    client: httpx.AsyncClient, owner: Account, depth: int
) -> None:
    nested = "[" * depth + '"\\u0000"' + "]" * depth
    body = '{"task": "system.echo", "payload": {"message": "m", "deep": ' + nested + "}}"
    problem = is_problem(await raw_json(client, "/api/v1/tasks/run", body), 422)
    assert problem["errors"][0]["type"] == "too_deep"
    assert problem["errors"][0]["field"].startswith("body")


async def test_nesting_within_the_limit_is_kept(client: httpx.AsyncClient, owner: Account) -> None:
    nested: Any = "bottom"
    for _ in range(40):
        nested = {"n": nested}
    answer = await client.post(
        "/api/v1/tasks/run", json={**RUN, "payload": {"message": "m", "deep": nested}}
    )
    assert answer.status_code == 202, answer.text
    run = (await client.get(f"/api/v1/tasks/{answer.json()['task_id']}")).json()
    assert run["payload"]["deep"] == nested


@pytest.mark.parametrize(
    "cursor_time", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-01-01T00:00"]
)
async def test_cursors_out_of_range_are_refused(
    client: httpx.AsyncClient, owner: Account, cursor_time: str
) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(f"{cursor_time}|{uuid.uuid4()}".encode()).decode()
    for path in ("/api/v1/tasks/", "/api/v1/documents"):
        answer = await client.get(path, params={"cursor": cursor})
        assert fields(is_problem(answer, 422)) == ["query.cursor"], path


async def test_concurrent_sign_ups_with_one_email_make_one_account_and_409s(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    email = f"race-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": "a long enough password", "tenant_name": "Race"}
    with caplog.at_level("INFO"):
        answers = await asyncio.gather(
            *(client.post("/api/v1/auth/register", json=body) for _ in range(6))
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201] + [409] * 5
    for answer in answers:
        if answer.status_code == 409:
            assert is_problem(answer, 409)["code"] == "conflict"
    assert "argon2" not in caplog.text
    assert "[parameters:" not in caplog.text


async def test_database_errors_never_log_their_parameters(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from switchyard.db.engine import create_engine

    settings = make_settings()
    assert settings.database is not None
    engine = create_engine(settings, settings.database, "test")
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as raised:
                await connection.execute(
                    text("SELECT CAST(:secret AS text), 1 / 0"), {"secret": "hash-of-a-password"}
                )
    finally:
        await engine.dispose()
    assert "hash-of-a-password" not in str(raised.value)
    assert "hidden due to hide_parameters" in str(raised.value)
