from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from switchyard.api.app import create_app
from switchyard.errors import ConflictError
from tests.fixtures.gateway import SettingsFactory, running

PROBLEM = "application/problem+json"


class Widget(BaseModel):
    name: str = Field(min_length=1)
    size: int = Field(gt=0)


def app_with_test_routes(settings_factory: SettingsFactory, **overrides: object) -> FastAPI:
    app = create_app(settings_factory(**overrides))

    @app.post("/test/widgets")
    async def create_widget(widget: Widget) -> Widget:
        return widget

    @app.get("/test/crash")
    async def crash() -> None:
        raise RuntimeError("database password is hunter2")

    @app.get("/test/conflict")
    async def conflict() -> None:
        raise ConflictError("The widget already exists.")

    return app


@pytest.fixture
async def test_client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app_with_test_routes(make_settings, max_request_body_bytes=2048)) as client:
        yield client


async def test_unknown_route_is_a_404_problem(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/api/v1/nothing-here", headers={"X-Request-ID": "req-404"})
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "instance": "/api/v1/nothing-here",
        "code": "not_found",
        "request_id": "req-404",
    }


async def test_wrong_method_is_a_405_problem_with_allow(test_client: httpx.AsyncClient) -> None:
    response = await test_client.delete("/api/v1/")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["allow"] == "GET"
    assert response.json()["code"] == "method_not_allowed"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_validation_error_names_each_failing_field(test_client: httpx.AsyncClient) -> None:
    response = await test_client.post("/test/widgets", json={"name": "", "size": -1})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == "validation_error"
    assert {error["field"] for error in body["errors"]} == {"body.name", "body.size"}
    assert all(error["message"] for error in body["errors"])


async def test_malformed_json_is_a_422_problem(test_client: httpx.AsyncClient) -> None:
    response = await test_client.post(
        "/test/widgets", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_invalid"


async def test_unhandled_error_is_a_500_problem_without_internals(
    test_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="switchyard.errors"):
        response = await test_client.get("/test/crash", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["x-request-id"] == "req-500"
    body = response.json()
    assert body["code"] == "internal_error"
    assert body["request_id"] == "req-500"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    assert any(record.exc_info for record in caplog.records)


async def test_domain_error_keeps_its_status_and_code(test_client: httpx.AsyncClient) -> None:
    response = await test_client.get("/test/conflict")
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert response.json()["detail"] == "The widget already exists."


async def test_oversized_body_is_a_413_problem(test_client: httpx.AsyncClient) -> None:
    response = await test_client.post("/test/widgets", json={"name": "x" * 4096, "size": 1})
    assert response.status_code == 413
    assert response.json()["code"] == "request_entity_too_large"
    assert response.json()["detail"] == "The request body is larger than 2048 bytes."


async def test_oversized_streamed_body_without_length_is_a_413(
    test_client: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 512

    response = await test_client.post(
        "/test/widgets", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "request_entity_too_large"


async def test_request_id_is_echoed_or_generated(test_client: httpx.AsyncClient) -> None:
    echoed = await test_client.get("/api/v1/", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = await test_client.get("/api/v1/")
    assert len(generated.headers["x-request-id"]) == 32
    unsafe = await test_client.get("/api/v1/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    assert len(unsafe.headers["x-request-id"]) == 32
