"""The tasks API's rules, checked before anything reaches a worker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.db.models import RunState, TaskRun
from switchyard.settings import Settings
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import RolledBackApi, SettingsFactory, running
from tests.fixtures.tasks import published_at, unique

PROBLEM = "application/problem+json"


async def run_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(TaskRun)) or 0)


def fields(response: httpx.Response) -> set[str]:
    assert response.headers["content-type"] == PROBLEM, response.text
    return {error["field"] for error in response.json()["errors"]}


async def test_registered_lists_tasks_with_schemas_policies_and_definitions(
    tasks_api: httpx.AsyncClient,
) -> None:
    body = (await tasks_api.get("/api/v1/tasks/registered")).json()
    tasks = {task["name"]: task for task in body["tasks"]}
    assert {"system.echo", "system.sleep", "system.fail"} <= tasks.keys()
    sleep = tasks["system.sleep"]
    assert sleep["queue"] == "default"
    assert sleep["input_schema"]["properties"]["seconds"]["maximum"] == 300
    assert sleep["input_schema"]["required"] == ["seconds"]
    fail = tasks["system.fail"]
    assert fail["retry"]["max_retries"] == 2
    assert fail["retry"]["retry_on"] == ["TransientFaultError"]
    assert fail["time_limit"] > fail["soft_time_limit"]
    assert isinstance(body["definitions"], list)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "system.sleep", "payload": {}}, "body.payload.seconds"),
        ({"task": "system.sleep", "payload": {"seconds": 301}}, "body.payload.seconds"),
        ({"task": "system.echo", "payload": {"message": 5}}, "body.payload.message"),
        ({"task": "system.echo", "payload": {"message": "x"}, "queue": "nope"}, "body.queue"),
        (
            {"task": "system.echo", "payload": {"message": "x"}, "countdown": 10**9},
            "body.countdown",
        ),
        ({"task": "system.echo", "countdown": -1}, "body.countdown"),
        # Strict types: not read as 1 second, or as 12 seconds after 1970.
        ({"task": "system.echo", "payload": {"message": "x"}, "countdown": True}, "body.countdown"),
        ({"task": "system.echo", "payload": {"message": "x"}, "countdown": "5"}, "body.countdown"),
        ({"task": "system.echo", "payload": {"message": "x"}, "eta": 12}, "body.eta"),
        ({"task": "system.echo", "payload": {"message": "x"}, "eta": "12"}, "body.eta"),
        ({"task": "system.echo", "definition": "both"}, "body"),
        ({"payload": {}}, "body"),
    ],
)
async def test_invalid_run_requests_are_422_naming_the_field_and_store_nothing(
    tasks_api: httpx.AsyncClient, engine: AsyncEngine, body: dict[str, object], field: str
) -> None:
    before = await run_count(engine)
    response = await tasks_api.post("/api/v1/tasks/run", json=body)
    assert response.status_code == 422
    assert field in fields(response)
    assert await run_count(engine) == before


async def test_unknown_task_or_definition_is_404(tasks_api: httpx.AsyncClient) -> None:
    for body in ({"task": "system.nope"}, {"definition": "no-such-definition"}):
        response = await tasks_api.post("/api/v1/tasks/run", json=body)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM


async def test_unknown_run_is_404_and_a_malformed_id_is_422(tasks_api: httpx.AsyncClient) -> None:
    missing = await tasks_api.get(f"/api/v1/tasks/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert (await tasks_api.post(f"/api/v1/tasks/{uuid.uuid4()}/cancel")).status_code == 404
    assert (await tasks_api.get(f"/api/v1/tasks/{uuid.uuid4()}/events")).status_code == 404
    malformed = await tasks_api.get("/api/v1/tasks/not-a-uuid")
    assert malformed.status_code == 422
    assert fields(malformed) == {"path.task_id"}


async def test_broker_down_is_503_with_retry_after_and_leaves_no_run(
    make_settings: SettingsFactory, engine: AsyncEngine
) -> None:
    settings = make_settings(
        celery_broker_url="amqp://guest:guest@127.0.0.1:1//", broker_publish_timeout_seconds=2
    )
    before = await run_count(engine)
    async with running(create_app(settings)) as client:
        client.headers.update((await sign_up(client)).headers)
        response = await client.post(
            "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "x"}}
        )
        health = (await client.get("/health")).json()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["code"] == "service_unavailable"
    assert await run_count(engine) == before
    assert health["checks"]["rabbitmq"]["status"] == "down"
    # Only submissions suffer: the gateway stays ready (reads go on), the report is degraded.
    assert health["checks"]["rabbitmq"]["critical"] is False
    assert health["status"] == "degraded"


async def test_gateway_without_broker_answers_503_for_runs(make_settings: SettingsFactory) -> None:
    async with running(create_app(make_settings())) as client:
        client.headers.update((await sign_up(client)).headers)
        response = await client.post("/api/v1/tasks/run", json={"task": "system.echo"})
    assert response.status_code == 503


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"task": "system.nope"}, "body.task"),
        ({"payload": {"seconds": "soon"}}, "body.payload.seconds"),
        ({"schedule": {"cron": "not cron"}}, "body.schedule.CronSchedule.cron"),
        (
            {"schedule": {"cron": "* * * * *", "timezone": "Mars/Base"}},
            "body.schedule.CronSchedule.timezone",
        ),
        ({"schedule": {"every_seconds": 0}}, "body.schedule.IntervalSchedule.every_seconds"),
        ({"name": "Bad Name!"}, "body.name"),
        ({"queue": "nope"}, "body.queue"),
    ],
)
async def test_invalid_definitions_are_422_naming_the_field(
    rolled_back_api: RolledBackApi, change: dict[str, object], field: str
) -> None:
    body = {"name": unique("def"), "task": "system.sleep", "payload": {"seconds": 1}, **change}
    response = await rolled_back_api.client.post("/api/v1/tasks/register", json=body)
    assert response.status_code == 422, response.text
    assert field in fields(response)


async def test_definition_lifecycle_and_duplicate_names(rolled_back_api: RolledBackApi) -> None:
    tasks_api = rolled_back_api.client
    name = unique("nightly")
    body = {
        "name": name,
        "task": "system.sleep",
        "payload": {"seconds": 1},
        "schedule": {"cron": "0 3 * * *", "timezone": "Europe/Paris"},
        "description": "nightly nap",
    }
    created = await tasks_api.post("/api/v1/tasks/register", json=body)
    assert created.status_code == 201
    assert created.json()["schedule"] == {"cron": "0 3 * * *", "timezone": "Europe/Paris"}
    assert created.json()["enabled"] is True
    duplicate = await tasks_api.post("/api/v1/tasks/register", json=body)
    assert duplicate.status_code == 409
    listed = (await tasks_api.get("/api/v1/tasks/registered")).json()["definitions"]
    assert name in {definition["name"] for definition in listed}

    bad_patch = await tasks_api.patch(
        f"/api/v1/tasks/definitions/{name}", json={"payload": {"seconds": 999}}
    )
    assert bad_patch.status_code == 422
    patched = await tasks_api.patch(
        f"/api/v1/tasks/definitions/{name}", json={"schedule": None, "enabled": False}
    )
    assert patched.status_code == 200
    assert patched.json()["schedule"] is None
    assert patched.json()["enabled"] is False
    fetched = await tasks_api.get(f"/api/v1/tasks/definitions/{name}")
    assert fetched.json()["payload"] == {"seconds": 1}
    assert (await tasks_api.delete(f"/api/v1/tasks/definitions/{name}")).status_code == 204
    assert (await tasks_api.get(f"/api/v1/tasks/definitions/{name}")).status_code == 404
    assert (await tasks_api.delete(f"/api/v1/tasks/definitions/{name}")).status_code == 404


@pytest.fixture
async def stored_runs(rolled_back_api: RolledBackApi) -> list[TaskRun]:
    """Five finished runs of a task of their own, one second apart, newest first (in the
    test's transaction: nothing to clean up)."""
    task = unique("test.page").replace("-", "_")
    start = datetime.now(UTC) - timedelta(hours=1)
    runs = [
        TaskRun(
            tenant_id=rolled_back_api.tenant_id,
            task=task,
            queue="default",
            payload={"i": i},
            state=RunState.SUCCEEDED if i % 2 else RunState.FAILED,
            attempts=1,
            created_at=start + timedelta(seconds=i),
        )
        for i in range(5)
    ]
    rolled_back_api.session.add_all(runs)
    await rolled_back_api.session.commit()  # into the test's transaction, for every request
    return list(reversed(runs))


async def test_runs_are_listed_newest_first_in_cursor_pages(
    rolled_back_api: RolledBackApi, stored_runs: list[TaskRun]
) -> None:
    tasks_api, task = rolled_back_api.client, stored_runs[0].task
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {
            "task": task,
            "limit": 2,
            **({"cursor": cursor} if cursor else {}),
        }
        page = (await tasks_api.get("/api/v1/tasks/", params=params)).json()
        seen += [item["task_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(run.id) for run in stored_runs]
    assert pages == 3
    failed = (
        await tasks_api.get("/api/v1/tasks/", params={"task": task, "state": "failed"})
    ).json()
    assert [item["payload"]["i"] for item in failed["items"]] == [4, 2, 0]


async def test_runs_are_filtered_by_submission_time(
    rolled_back_api: RolledBackApi, stored_runs: list[TaskRun]
) -> None:
    tasks_api, task = rolled_back_api.client, stored_runs[0].task
    oldest = stored_runs[-1].created_at
    window = {
        "task": task,
        "since": (oldest + timedelta(seconds=1)).isoformat(),  # inclusive
        "until": (oldest + timedelta(seconds=3)).isoformat(),  # exclusive
    }
    page = (await tasks_api.get("/api/v1/tasks/", params=window)).json()
    assert [item["payload"]["i"] for item in page["items"]] == [2, 1]
    naive = await tasks_api.get("/api/v1/tasks/", params={"since": "2026-12-01T10:00:00"})
    assert fields(naive) == {"query.since"}  # a time without its zone is ambiguous
    before_year_one = await tasks_api.get(
        "/api/v1/tasks/", params={"until": "0001-01-01T00:00:00+14:00"}
    )
    assert fields(before_year_one) == {"query.until"}


async def test_bad_cursor_and_page_size_are_422(rolled_back_api: RolledBackApi) -> None:
    tasks_api = rolled_back_api.client
    assert fields(await tasks_api.get("/api/v1/tasks/", params={"cursor": "garbage"})) == {
        "query.cursor"
    }
    assert fields(await tasks_api.get("/api/v1/tasks/", params={"limit": 1000})) == {"query.limit"}
    assert fields(await tasks_api.get("/api/v1/tasks/", params={"state": "sleeping"})) == {
        "query.state"
    }


async def test_cancel_of_a_final_run_is_409(
    rolled_back_api: RolledBackApi, stored_runs: list[TaskRun]
) -> None:
    response = await rolled_back_api.client.post(f"/api/v1/tasks/{stored_runs[0].id}/cancel")
    assert response.status_code == 409
    assert "already" in response.json()["detail"]


@pytest.fixture
async def committed_run(engine: AsyncEngine, tasks_account: Account) -> AsyncIterator[uuid.UUID]:
    """A succeeded run, committed: live events read the ledger on connections of their own."""
    run = TaskRun(
        tenant_id=tasks_account.tenant_id,
        task=unique("test.events").replace("-", "_"),
        queue="default",
        payload={},
        state=RunState.SUCCEEDED,
        attempts=1,
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions.begin() as session:
        session.add(run)
    yield run.id
    async with sessions.begin() as session:
        await session.delete(await session.get_one(TaskRun, run.id))


async def test_events_of_a_final_run_are_its_state_then_the_end(
    tasks_api: httpx.AsyncClient, committed_run: uuid.UUID
) -> None:
    response = await tasks_api.get(f"/api/v1/tasks/{committed_run}/events")
    data = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert len(data) == 1
    assert '"state": "succeeded"' in data[0]


async def test_an_accepted_run_is_stored_published_and_located(
    tasks_api: httpx.AsyncClient,
    tasks_account: Account,
    task_settings: Settings,
    engine: AsyncEngine,
) -> None:
    accepted = await tasks_api.post(
        "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "where"}}
    )
    assert accepted.status_code == 202
    run_id = uuid.UUID(accepted.json()["task_id"])
    assert accepted.headers["location"] == f"/api/v1/tasks/{run_id}"
    async with async_sessionmaker(engine)() as session:
        stored = await session.get(TaskRun, run_id)
    assert stored is not None
    assert stored.tenant_id == tasks_account.tenant_id
    assert stored.payload == {"message": "where"}
    # queued, unless a worker of another test on this broker took it already
    assert stored.state in {RunState.QUEUED, RunState.STARTED, RunState.SUCCEEDED}
    # the publish was confirmed and recorded (in the next batch of marks)
    assert await published_at(engine, run_id) is not None
    assert stored.created_at is not None
    assert stored.updated_at is not None

    # Behind a proxy that mounts the API under a prefix, the Location carries it.
    app = create_app(task_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/edge")
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=tasks_account.headers
        ) as mounted:
            mounted_run = await mounted.post(
                "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "x"}}
            )
    assert mounted_run.status_code == 202
    assert mounted_run.headers["location"] == f"/edge/api/v1/tasks/{mounted_run.json()['task_id']}"
