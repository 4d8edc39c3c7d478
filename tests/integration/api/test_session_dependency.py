from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Message, Receive, Scope, Send

from switchyard.api.app import create_app
from switchyard.db.models import Tenant
from switchyard.dependencies import SessionDep
from tests.fixtures.gateway import SettingsFactory, running


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
