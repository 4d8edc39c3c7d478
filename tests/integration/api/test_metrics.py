"""The gateway's /metrics: requests by route template, submissions, cache, pools, rate limits."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import RunState
from switchyard.settings import Settings
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.scrape import label_values, metric_value
from tests.fixtures.tasks import insert_run, unique

TASK_ROUTE = "/api/v1/tasks/{task_id}"


async def scrape(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_requests_are_counted_by_route_template_method_and_status(
    make_settings: SettingsFactory,
) -> None:
    async with running(create_app(make_settings())) as client:
        account = await sign_up(client)
        before = await scrape(client)
        missing = [uuid.uuid4() for _ in range(3)]
        for task_id in missing:
            answer = await client.get(f"/api/v1/tasks/{task_id}", headers=account.headers)
            assert answer.status_code == 404
        assert (await client.get("/no/such/path")).status_code == 404
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    labels = {"method": "GET", "route": TASK_ROUTE}
    assert moved("switchyard_http_requests_total", **labels, status="404") == 3
    assert moved("switchyard_http_request_duration_seconds_count", **labels) == 3
    assert moved("switchyard_http_request_duration_seconds_sum", **labels) > 0
    assert moved("switchyard_http_requests_total", route="<unmatched>", status="404") == 1
    # A label per raw path would grow without bound: ids never appear.
    routes = label_values(after, "switchyard_http_requests_total", "route")
    assert not any(str(task_id) in route for route in routes for task_id in missing)
    assert {"/api/v1/auth/register", TASK_ROUTE} <= routes


async def test_submissions_are_counted_by_task_and_outcome(task_settings: Settings) -> None:
    async with running(create_app(task_settings)) as client:
        account = await sign_up(client)
        before = await scrape(client)
        key = {"Idempotency-Key": unique("metrics")}
        body = {"task": "system.echo", "payload": {"message": "counted"}}
        for _ in range(2):
            answer = await client.post(
                "/api/v1/tasks/run", json=body, headers={**account.headers, **key}
            )
            assert answer.status_code == 202, answer.text
        after = await scrape(client)

    def moved(outcome: str) -> float:
        name = "switchyard_task_runs_submitted_total"
        labels = {"task": "system.echo", "outcome": outcome}
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert moved("accepted") == 1
    assert moved("duplicate") == 1


async def test_final_runs_are_read_through_the_cache_and_counted(
    make_settings: SettingsFactory, engine: AsyncEngine
) -> None:
    async with running(create_app(make_settings())) as client:
        account = await sign_up(client)
        done = await insert_run(
            engine, account.tenant_id, state=RunState.SUCCEEDED, result={"answer": 42}
        )
        queued = await insert_run(engine, account.tenant_id)
        before = await scrape(client)
        first = await client.get(f"/api/v1/tasks/{done.id}", headers=account.headers)
        second = await client.get(f"/api/v1/tasks/{done.id}", headers=account.headers)
        for _ in range(2):
            await client.get(f"/api/v1/tasks/{queued.id}", headers=account.headers)
        after = await scrape(client)

    assert first.json() == second.json()
    assert second.json()["result"] == {"answer": 42}

    def moved(result: str) -> float:
        name = "switchyard_cache_lookups_total"
        return metric_value(after, name, result=result) - metric_value(before, name, result=result)

    # The final run: a miss, then a hit. The queued one is never cached: two misses.
    assert moved("hit") == 1
    assert moved("miss") == 3


async def test_database_pool_figures_are_exposed(make_settings: SettingsFactory) -> None:
    settings = make_settings(database_pool_size=7)
    async with running(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200
        text = await scrape(client)
    assert metric_value(text, "switchyard_db_pool_size", database="main") >= 7
    assert metric_value(text, "switchyard_db_pool_connections_in_use", database="main") >= 0
    assert "switchyard_db_pool_overflow" in text


async def test_rate_limit_rejections_are_counted(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit_auth="2/minute", cache_namespace=unique("rl"))
    async with running(create_app(settings)) as client:
        before = await scrape(client)
        body = {"email": "nobody@example.com", "password": "wrong password!!"}
        answers = [await client.post("/api/v1/auth/login", json=body) for _ in range(4)]
        after = await scrape(client)
    assert [answer.status_code for answer in answers] == [401, 401, 429, 429]
    name = "switchyard_rate_limit_rejections_total"
    assert metric_value(after, name, limit="auth") - metric_value(before, name, limit="auth") == 2


async def test_metrics_token_guards_the_endpoint(make_settings: SettingsFactory) -> None:
    settings = make_settings(metrics_token="scrape-" + "s" * 30)
    async with running(create_app(settings)) as client:
        anonymous = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-it"})
        text = await scrape(client, Authorization="Bearer scrape-" + "s" * 30)
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert "METRICS_TOKEN" in refused.json()["detail"]
        assert "scrape-" not in refused.text
    assert "switchyard_http_requests_total" in text
    # Not part of the public API description.
    async with running(create_app(settings)) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/metrics" not in paths
