"""A tenant's uploads are limited in rate and in documents being ingested at once: past
either, 429 with Retry-After and a problem body, and nothing of the refused upload is kept
(no object, no row, no run). Another tenant's uploads are not affected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import KnowledgeDocument, TaskRun
from switchyard.services.container import Services
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT

INGESTING = 2


@pytest.fixture
def app(make_settings: SettingsFactory, own_broker: str, tmp_path: Path) -> FastAPI:
    settings = make_settings(
        celery_broker_url=own_broker,  # no worker: uploads stay `pending`
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        document_max_ingesting_per_tenant=INGESTING,
    )
    return create_app(settings)


async def upload(client: httpx.AsyncClient, account: Account, n: int) -> httpx.Response:
    return await client.post(
        "/api/v1/documents",
        files={"file": (f"notes-{n}.txt", b"some notes " * 100, "text/plain")},
        headers=account.headers,
    )


async def kept(app: FastAPI, engine: AsyncEngine, account: Account) -> tuple[int, int, int]:
    """(objects, document rows, runs) the tenant has."""
    services: Services = app.state.gateway.services
    objects = await services.objects.list(account.tenant_id)
    async with engine.connect() as connection:
        documents = await connection.scalar(
            select(func.count())
            .select_from(KnowledgeDocument)
            .where(KnowledgeDocument.tenant_id == account.tenant_id)
        )
        runs = await connection.scalar(
            select(func.count()).select_from(TaskRun).where(TaskRun.tenant_id == account.tenant_id)
        )
    return len(objects), int(documents or 0), int(runs or 0)


def refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["code"] == "rate_limited"


async def test_uploads_past_the_ingesting_cap_are_429_and_leave_nothing(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    a, b = await sign_up(client), await sign_up(client)
    for n in range(INGESTING):
        assert (await upload(client, a, n)).status_code == 202
    over = await upload(client, a, 99)
    refused(over)
    assert "DOCUMENT_MAX_INGESTING_PER_TENANT" in over.json()["detail"]
    assert await kept(app, engine, a) == (INGESTING, INGESTING, INGESTING)
    assert (await upload(client, b, 0)).status_code == 202  # another tenant's are not held


async def test_concurrent_uploads_count_each_other(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    a = await sign_up(client)
    answers = await asyncio.gather(*(upload(client, a, n) for n in range(8)))
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [202] * INGESTING + [429] * (8 - INGESTING)
    assert await kept(app, engine, a) == (INGESTING, INGESTING, INGESTING)


async def test_uploads_past_the_rate_are_429_and_leave_nothing(
    make_settings: SettingsFactory, own_broker: str, tmp_path: Path, engine: AsyncEngine
) -> None:
    settings = make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        var_dir=tmp_path,
        rate_limit_uploads="2/minute",
    )
    app = create_app(settings)
    async with running(app) as client:
        a, b = await sign_up(client), await sign_up(client)
        assert [(await upload(client, a, n)).status_code for n in range(2)] == [202, 202]
        over = await upload(client, a, 2)
        refused(over)
        assert await kept(app, engine, a) == (2, 2, 2)
        assert (await upload(client, b, 0)).status_code == 202
