"""The backing services as the API shows them: the health report, the LLM and graph features
(503 naming the missing setting when off), and the local store's presigned links."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx

from switchyard.api.app import create_app
from switchyard.services.container import Services
from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.accounts import sign_up
from tests.fixtures.backing import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.fixtures.gateway import SettingsFactory, running


def llm_on(fake: FakeZhipu) -> dict[str, Any]:
    return {
        "zhipuai_api_key": API_KEY,
        "zhipuai_base_url": fake.base_url,
        "zhipuai_retry_backoff_seconds": 0.01,
        "zhipuai_max_retries": 1,
    }


async def test_health_lists_every_backing_service(
    make_settings: SettingsFactory,
    zhipu: FakeZhipu,
    s3_endpoint: str,
    chroma_server: tuple[str, int],
    broker_url: str,
) -> None:
    settings = make_settings(
        celery_broker_url=broker_url,
        minio_endpoint=s3_endpoint,
        minio_access_key=S3_ACCESS_KEY,
        minio_secret_key=S3_SECRET_KEY,
        chroma_host=chroma_server[0],
        chroma_port=chroma_server[1],
        **llm_on(zhipu),
    )
    async with running(create_app(settings)) as client:
        response = await client.get("/health")
    body = response.json()
    assert response.status_code == 200, body
    checks = body["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {
        "postgres": "up",
        "redis": "up",
        "rabbitmq": "up",
        "minio": "up",
        "chroma": "up",
        "neo4j": "disabled",
        "zhipu": "up",
        "disk": "up",
        "memory": "up",
    }
    # By default only PostgreSQL decides readiness: a Redis or broker outage degrades.
    assert {name for name, check in checks.items() if check["critical"]} == {"postgres"}
    assert all(check["latency_ms"] >= 0 for check in checks.values())
    # The probe is no paid call: it lists the account's files with the key.
    assert {request.path for request in zhipu.probes} == {"/api/paas/v4/files"}
    assert zhipu.requests == []


async def test_a_critical_dependency_that_is_not_configured_fails_readiness(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(health_critical="postgres,neo4j")  # and no NEO4J_URI
    async with running(create_app(settings)) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "error"
    assert ready.json()["checks"]["neo4j"] | {"latency_ms": 0} == {
        "status": "disabled",
        "critical": True,
        "latency_ms": 0,
    }


async def test_critical_checks_come_from_settings(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        zhipuai_api_key="k",
        zhipuai_base_url="http://127.0.0.1:9/api/paas/v4/",
        minio_endpoint="127.0.0.1:9",
        minio_access_key="a",
        minio_secret_key="b",
        health_critical="postgres,zhipu",
    )
    async with running(create_app(settings)) as client:
        full = await client.get("/health")
        ready = await client.get("/health/ready")
    body = full.json()
    assert full.status_code == 503
    assert body["status"] == "error"
    assert body["checks"]["zhipu"] | {"latency_ms": 0} == {
        "status": "down",
        "critical": True,
        "latency_ms": 0,
        "error": body["checks"]["zhipu"]["error"],
    }
    assert "Connect" in body["checks"]["zhipu"]["error"]
    assert body["checks"]["minio"]["status"] == "down"
    assert body["checks"]["minio"]["critical"] is False
    assert body["checks"]["redis"]["critical"] is False
    assert ready.status_code == 503
    assert set(ready.json()["checks"]) == {"postgres", "zhipu"}


async def test_llm_and_graph_features_say_which_setting_is_missing(
    client: httpx.AsyncClient,
) -> None:
    owner = await sign_up(client)
    chat = await client.post(
        "/api/v1/llm/chat",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=owner.headers,
    )
    assert chat.status_code == 503
    assert chat.headers["content-type"] == "application/problem+json"
    assert chat.json()["code"] == "llm_disabled"
    assert "ZHIPUAI_API_KEY" in chat.json()["detail"]
    graph = await client.get("/api/v1/graph/entities", headers=owner.headers)
    assert graph.status_code == 503
    assert graph.json()["code"] == "graph_disabled"
    assert "NEO4J_URI" in graph.json()["detail"]
    # Embeddings need no key: without one, the local model that serves search answers.
    vectors = await client.post(
        "/api/v1/llm/embeddings", json={"input": ["lunch at noon", "badges"]}, headers=owner.headers
    )
    assert vectors.status_code == 200, vectors.text
    assert vectors.json()["model"] == "local-minilm-l6-v2"
    assert [len(vector) for vector in vectors.json()["data"]] == [384, 384]
    assert vectors.json()["usage"]["total_tokens"] == 0


async def test_llm_chat_stream_and_embeddings_through_the_api(
    make_settings: SettingsFactory, zhipu: FakeZhipu
) -> None:
    async with running(create_app(make_settings(**llm_on(zhipu)))) as client:
        owner = await sign_up(client)
        client.headers.update(owner.headers)
        messages = [{"role": "user", "content": "tell me"}]
        plain = await client.post("/api/v1/llm/chat", json={"messages": messages})
        assert plain.status_code == 200, plain.text
        assert plain.json()["content"] == "echo: tell me"
        assert plain.json()["usage"]["total_tokens"] == 5

        zhipu.reply = "a b"
        async with client.stream(
            "POST", "/api/v1/llm/chat", json={"messages": messages, "stream": True}
        ) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in streamed.aiter_lines() if line.startswith("data:")]
        payloads = [json.loads(line.removeprefix("data:")) for line in lines]
        assert [p.get("content") for p in payloads[:-1]] == ["a", " b"]
        assert payloads[-1]["finish_reason"] == "stop"

        vectors = await client.post("/api/v1/llm/embeddings", json={"input": ["x y", "z"]})
        assert vectors.status_code == 200
        assert len(vectors.json()["data"]) == 2

        zhipu.fail_next(429, times=2, retry_after=0)
        busy = await client.post("/api/v1/llm/chat", json={"messages": messages})
        assert busy.status_code == 503
        assert busy.json()["code"] == "llm_rate_limited"
        assert busy.headers["retry-after"] == "5"

        zhipu.fail_next(500, times=2)
        refused = await client.post("/api/v1/llm/chat", json={"messages": messages, "stream": True})
        assert refused.status_code == 502
        assert refused.json()["code"] == "llm_error"

        bad = await client.post("/api/v1/llm/chat", json={"messages": []})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "body.messages"

        key = await client.post(
            "/api/v1/api-keys", json={"name": "tasks", "scopes": ["tasks:read"]}
        )
        del client.headers["Authorization"]
        denied = await client.post(
            "/api/v1/llm/embeddings",
            json={"input": ["x"]},
            headers={"X-API-Key": key.json()["key"]},
        )
        assert denied.status_code == 403
        assert "llm:use" in denied.json()["detail"]


async def test_local_presigned_links_are_served_by_the_gateway(
    make_settings: SettingsFactory,
) -> None:
    app = create_app(make_settings(public_base_url="http://testserver"))
    async with running(app) as client:
        services: Services = app.state.gateway.services
        tenant = uuid.uuid4()
        await services.objects.put(tenant, "reports/q3.txt", b"quarter", content_type="text/plain")
        url = await services.objects.presigned_get(tenant, "reports/q3.txt", timedelta(minutes=1))
        served = await client.get(url)
        assert served.status_code == 200
        assert served.content == b"quarter"
        assert served.headers["content-type"].startswith("text/plain")

        tampered = await client.get(url.replace(str(tenant), str(uuid.uuid4())))
        assert tampered.status_code == 404
        assert tampered.headers["content-type"] == "application/problem+json"
        traversal = await client.get("/objects/tenants/../../etc/passwd?expires=1&signature=x")
        assert traversal.status_code == 404
