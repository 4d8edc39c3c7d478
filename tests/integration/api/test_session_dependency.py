from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Message, Receive, Scope, Send

from switchyard.api.app import create_app
from switchyard.db.models import TaskDefinition, TaskRun, Tenant
from switchyard.db.session import after_commit, on_failure
from switchyard.errors import ConflictError, ServiceUnavailableError
from switchyard.platform.dependencies import SessionDep
from switchyard.platform.publisher import RunMessage
from switchyard.settings import Settings
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import RolledBackApi, SettingsFactory, running


def app_writing_tenants(make_settings: SettingsFactory, **overrides: object) -> FastAPI:
    app = create_app(make_settings(**overrides))

    @app.post("/test/tenants/{slug}")
    async def add(slug: str, session: SessionDep, fail: bool = False) -> dict[str, str]:
        session.add(Tenant(name=slug, slug=slug))
        await session.flush()
        if fail:
            raise RuntimeError("after the write")
        return {"slug": slug}

    return app


@pytest.fixture
async def slug(engine: AsyncEngine) -> AsyncIterator[str]:
    value = f"uow-{uuid.uuid4().hex[:8]}"
    yield value
    async with engine.begin() as connection:
        await connection.execute(delete(Tenant).where(Tenant.slug == value))


async def stored(engine: AsyncEngine, slug: str) -> bool:
    async with engine.connect() as connection:
        found = await connection.scalar(select(Tenant.id).where(Tenant.slug == slug))
    return found is not None


async def test_session_commits_when_the_route_returns(
    make_settings: SettingsFactory, engine: AsyncEngine, slug: str
) -> None:
    async with running(app_writing_tenants(make_settings)) as client:
        response = await client.post(f"/test/tenants/{slug}")
    assert response.status_code == 200
    assert await stored(engine, slug)


async def test_session_rolls_back_when_the_route_fails(
    make_settings: SettingsFactory, engine: AsyncEngine, slug: str
) -> None:
    async with running(app_writing_tenants(make_settings)) as client:
        response = await client.post(f"/test/tenants/{slug}", params={"fail": True})
    assert response.status_code == 500
    assert not await stored(engine, slug)


async def test_routes_needing_a_database_answer_503_without_one(
    make_settings: SettingsFactory,
) -> None:
    async with running(app_writing_tenants(make_settings, database_url=None)) as client:
        response: httpx.Response = await client.post("/test/tenants/none")
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"


async def test_the_write_is_committed_before_the_response_starts(
    make_settings: SettingsFactory, engine: AsyncEngine
) -> None:
    """A 2xx promises the change is stored: a client acting on it at once must see it."""
    app = app_writing_tenants(make_settings)
    slug = f"early-{uuid.uuid4().hex[:8]}"
    seen_at_response: list[int] = []

    async def observing(scope: Scope, receive: Receive, send: Send) -> None:
        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start" and scope["path"].endswith(slug):
                async with engine.connect() as connection:
                    found = await connection.scalars(select(Tenant.id).where(Tenant.slug == slug))
                    seen_at_response.append(len(found.all()))
            await send(message)

        await app(scope, receive, observe)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=observing)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.post(f"/test/tenants/{slug}")
    assert answer.status_code == 200
    assert seen_at_response == [1]
    async with engine.begin() as connection:
        await connection.execute(delete(Tenant).where(Tenant.slug == slug))


def app_with_actions(make_settings: SettingsFactory, journal: list[str]) -> FastAPI:
    """A route that writes a tenant and says what follows its commit and undoes its failure."""
    app = create_app(make_settings())
    engine_of: list[AsyncEngine] = []

    async def committed(slug: str) -> str:
        async with engine_of[0].connect() as connection:
            found = await connection.scalar(select(Tenant.id).where(Tenant.slug == slug))
        return "committed" if found is not None else "not committed"

    @app.post("/test/actions/{slug}")
    async def act(slug: str, session: SessionDep, fail: str = "") -> dict[str, str]:
        engine_of.append(session.bind)  # type: ignore[arg-type]

        async def after() -> None:
            journal.append(f"after commit: {await committed(slug)}")
            if fail == "after":
                raise ServiceUnavailableError("the broker refused")

        async def undo() -> None:
            journal.append(f"undo: {await committed(slug)}")

        session.add(Tenant(name=slug, slug=slug))
        await session.flush()
        after_commit(session, after)
        on_failure(session, undo)
        if fail == "route":
            raise ConflictError("after the write")
        return {"slug": slug}

    return app


async def act(
    make_settings: SettingsFactory, slug: str, fail: str = ""
) -> tuple[httpx.Response, list[str]]:
    """POST the route of `app_with_actions`; its answer and what ran around the commit."""
    journal: list[str] = []
    async with running(app_with_actions(make_settings, journal)) as client:
        response = await client.post(f"/test/actions/{slug}", params={"fail": fail})
    return response, journal


async def test_after_commit_actions_run_once_the_change_is_committed(
    make_settings: SettingsFactory, engine: AsyncEngine, slug: str
) -> None:
    response, journal = await act(make_settings, slug)
    assert response.status_code == 200
    assert journal == ["after commit: committed"]  # the action saw the committed row
    assert await stored(engine, slug)


async def test_a_failed_route_runs_its_undos_and_never_its_after_commit_actions(
    make_settings: SettingsFactory, engine: AsyncEngine, slug: str
) -> None:
    response, journal = await act(make_settings, slug, "route")
    assert response.status_code == 409
    assert journal == ["undo: not committed"]
    assert not await stored(engine, slug)


async def test_a_failed_after_commit_action_runs_the_undos_and_answers_its_error(
    make_settings: SettingsFactory, engine: AsyncEngine, slug: str
) -> None:
    response, journal = await act(make_settings, slug, "after")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "the broker refused"
    assert journal == ["after commit: committed", "undo: committed"]


async def test_a_run_is_committed_before_the_broker_sees_it(
    task_settings: Settings, engine: AsyncEngine
) -> None:
    """POST /tasks/run writes the ledger row (in its group's transaction: platform.submission)
    and publishes it only after the commit: at the moment of the publish another connection
    sees the row."""
    app = create_app(task_settings)  # the broker's queues as every test declares them
    seen: list[int] = []
    async with running(app) as client:
        client.headers.update((await sign_up(client)).headers)
        publisher = app.state.gateway.broker.publisher
        original = publisher.publish_many

        async def observing(messages: list[RunMessage]) -> list[bool]:
            async with engine.connect() as connection:
                for message in messages:
                    found = await connection.scalar(
                        select(func.count())
                        .select_from(TaskRun)
                        .where(TaskRun.id == uuid.UUID(message.run_id))
                    )
                    seen.append(int(found or 0))
            confirmed: list[bool] = await original(messages)
            return confirmed

        publisher.publish_many = observing
        response = await client.post(
            "/api/v1/tasks/run", json={"task": "system.echo", "payload": {"message": "x"}}
        )
    assert response.status_code == 202, response.text
    assert seen == [1]


async def test_a_rolled_back_api_commits_nothing_outside_the_tests_transaction(
    rolled_back_api: RolledBackApi, engine: AsyncEngine
) -> None:
    """What a route of `rolled_back_api` writes is there for the test's next request, and
    nowhere else: another connection never sees it, so it needs no clean-up."""
    name = f"rolled-back-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "task": "system.sleep", "payload": {"seconds": 1}}
    created = await rolled_back_api.client.post("/api/v1/tasks/register", json=body)
    assert created.status_code == 201, created.text
    again = await rolled_back_api.client.get(f"/api/v1/tasks/definitions/{name}")
    assert again.status_code == 200
    async with engine.connect() as connection:
        elsewhere = await connection.scalar(
            select(func.count()).select_from(TaskDefinition).where(TaskDefinition.name == name)
        )
    assert elsewhere == 0
