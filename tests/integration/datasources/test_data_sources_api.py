"""/api/v1/data-sources: CRUD per tenant, URLs encrypted at rest, passwords never answered,
and connectivity tests run as tasks by a real worker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from switchyard.api.app import create_app
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import RolledBackApi, SettingsFactory, running
from tests.fixtures.messaging import own_vhost
from tests.fixtures.processes import RunningRole, reap, spawn_role
from tests.fixtures.tasks import DELIVERY_LIMIT, wait_for_run

SECRET = "pa55-Word-never-shown"
URL_ = f"postgresql://reporter:{SECRET}@db.example.com:5433/sales"


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post(
        "/api/v1/data-sources", json={"name": "sales", "url": URL_, **body}, headers=headers
    )


def given(api: RolledBackApi) -> tuple[httpx.AsyncClient, dict[str, str]]:
    """The client of a rolled-back API, and no headers: its caller is given."""
    return api.client, {}


async def test_crud_with_redacted_urls_and_encrypted_storage(
    rolled_back_api: RolledBackApi,
) -> None:
    client, headers = given(rolled_back_api)
    created = await create(client, headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["url"] == "postgresql://reporter:***@db.example.com:5433/sales"
    assert body["kind"] == "postgresql"
    assert created.headers["location"] == f"/api/v1/data-sources/{body['id']}"

    stored = await rolled_back_api.session.scalar(
        text("SELECT encrypted_connection_url FROM data_source_connections WHERE id = :id"),
        {"id": body["id"]},
    )
    assert SECRET.encode() not in stored
    assert b"db.example.com" not in stored

    listed = (await client.get("/api/v1/data-sources", headers=headers)).json()
    assert [item["id"] for item in listed["items"]] == [body["id"]]
    changed = await client.patch(
        f"/api/v1/data-sources/{body['id']}",
        json={"name": "warehouse", "url": "mysql://bi:other-secret@maria.example.com/bi"},
        headers=headers,
    )
    assert changed.status_code == 200
    assert changed.json()["name"] == "warehouse"
    assert changed.json()["kind"] == "mysql"
    assert changed.json()["url"] == "mysql://bi:***@maria.example.com/bi"
    fetched = await client.get(f"/api/v1/data-sources/{body['id']}", headers=headers)
    assert fetched.json()["url"] == "mysql://bi:***@maria.example.com/bi"

    everything = created.text + changed.text + fetched.text + str(listed)
    assert SECRET not in everything
    assert "other-secret" not in everything

    deleted = await client.delete(f"/api/v1/data-sources/{body['id']}", headers=headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/api/v1/data-sources/{body['id']}", headers=headers)
    assert gone.status_code == 404


async def test_bad_input_is_a_problem_naming_the_field(rolled_back_api: RolledBackApi) -> None:
    client, headers = given(rolled_back_api)
    bad = await create(client, headers, url=f"sqlite:///{SECRET}.db")
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in bad.json()["errors"]] == ["body.url"]
    assert SECRET not in bad.text

    assert (await create(client, headers)).status_code == 201
    twice = await create(client, headers)
    assert twice.status_code == 409
    assert "sales" in twice.json()["detail"]

    unknown = await client.patch(
        f"/api/v1/data-sources/{uuid.uuid4()}", json={"name": "x"}, headers=headers
    )
    assert unknown.status_code == 404


async def test_tenants_and_scopes_are_enforced(client: httpx.AsyncClient) -> None:
    owner, stranger = await sign_up(client), await sign_up(client)
    source = (await create(client, owner.headers)).json()
    for method, path in (
        ("GET", f"/api/v1/data-sources/{source['id']}"),
        ("PATCH", f"/api/v1/data-sources/{source['id']}"),
        ("DELETE", f"/api/v1/data-sources/{source['id']}"),
        ("POST", f"/api/v1/data-sources/{source['id']}/test"),
    ):
        answer = await client.request(
            method, path, headers=stranger.headers, json={} if method == "PATCH" else None
        )
        assert answer.status_code in (404, 503), (method, path, answer.status_code)
        if method != "POST":
            assert answer.status_code == 404
    assert (await client.get("/api/v1/data-sources", headers=stranger.headers)).json() == {
        "items": []
    }

    key = await client.post(
        "/api/v1/api-keys",
        json={"name": "reader", "scopes": ["datasources:read"]},
        headers=owner.headers,
    )
    reader = {"X-API-Key": key.json()["key"]}
    assert (await client.get("/api/v1/data-sources", headers=reader)).status_code == 200
    refused = await create(client, reader, name="other")
    assert refused.status_code == 403
    assert "datasources:write" in refused.json()["detail"]


@pytest.fixture
def api(api_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return api_client


@pytest.fixture(scope="module")
def local_broker() -> Iterator[str]:
    """A vhost of its own: the session's workers refuse local hosts and must not take
    these runs."""
    with own_vhost() as url:
        yield url


@pytest.fixture(scope="module")
def local_worker(
    task_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, local_broker: str
) -> Iterator[RunningRole]:
    """A worker allowed to reach local hosts (the test database is on 127.0.0.1)."""
    workdir = tmp_path_factory.mktemp("datasource-worker")
    worker = spawn_role(
        "worker",
        workdir,
        {
            **task_env,
            "CELERY_BROKER_URL": local_broker,
            "WORKER_QUEUES": "default",
            "VAR_DIR": str(workdir),
            "DATA_SOURCE_ALLOW_LOCAL_HOSTS": "true",
            "DATA_SOURCE_TEST_TIMEOUT_SECONDS": "15",  # a loaded CI machine connects slowly
        },
    )
    worker.wait_heartbeat(workdir / "worker.heartbeat")
    yield worker
    reap(worker)


async def run_test(api: httpx.AsyncClient, owner: Account, url: str) -> dict[str, Any]:
    source = await api.post(
        "/api/v1/data-sources",
        json={"name": uuid.uuid4().hex[:8], "url": url},
        headers=owner.headers,
    )
    assert source.status_code == 201, source.text
    started = await api.post(
        f"/api/v1/data-sources/{source.json()['id']}/test", headers=owner.headers
    )
    assert started.status_code == 202, started.text
    assert started.headers["location"] == f"/api/v1/tasks/{started.json()['task_id']}"
    api.headers.update(owner.headers)
    run = await wait_for_run(api, started.json()["task_id"], within=30)
    assert run["task"] == "datasources.test_connection"
    assert run["state"] == "succeeded", run
    result: dict[str, Any] = run["result"]
    assert result["data_source_id"] == source.json()["id"]
    return result


@pytest.fixture
async def local_api(
    make_settings: SettingsFactory, local_broker: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(celery_broker_url=local_broker, task_delivery_limit=DELIVERY_LIMIT)
    async with running(create_app(settings)) as client:
        yield client


async def test_connectivity_tests_report_on_the_run(
    local_api: httpx.AsyncClient, local_worker: RunningRole, database_url: URL
) -> None:
    api = local_api
    owner = await sign_up(api)
    reachable = await run_test(
        api, owner, database_url.set(drivername="postgresql").render_as_string(False)
    )
    assert reachable["ok"] is True, reachable
    assert reachable["server_version"].split(".")[0].isdigit()
    assert reachable["address"] == "127.0.0.1"

    maria = await run_test(api, owner, "mysql://root@127.0.0.1:3306/test")
    assert maria["ok"] is True, maria
    assert "MariaDB" in maria["server_version"]

    wrong = await run_test(
        api,
        owner,
        database_url.set(drivername="postgresql", database="no_such_db").render_as_string(False),
    )
    assert wrong["ok"] is False
    assert "no_such_db" in wrong["error"]


async def test_connectivity_tests_refuse_local_hosts_by_default(
    api: httpx.AsyncClient, default_worker: RunningRole, database_url: URL
) -> None:
    owner = await sign_up(api)
    url = database_url.set(drivername="postgresql", host="localhost").render_as_string(False)
    refused = await run_test(api, owner, url)
    assert refused["ok"] is False
    assert refused["refused"] is True
    assert "loopback" in refused["error"]
    assert "DATA_SOURCE_ALLOW_LOCAL_HOSTS" in refused["error"]
    metadata = await run_test(api, owner, "postgresql://u:p@169.254.169.254/db")
    assert metadata["refused"] is True
    assert "metadata" in metadata["error"]
