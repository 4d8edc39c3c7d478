"""The production Zhipu client against a local fake of the Zhipu HTTP API."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from switchyard.services.llm import (
    EMBEDDING_BATCH,
    ChatMessage,
    LLMBusyError,
    LLMDisabledError,
    LLMError,
    LLMRequestError,
    LLMTimeoutError,
    ZhipuClient,
    create_llm,
)
from switchyard.settings import Settings
from tests.fakes.zhipu import API_KEY, FakeZhipu, embed

USER = [ChatMessage(role="user", content="hello there")]


def llm_settings(fake: FakeZhipu, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "zhipuai_api_key": API_KEY,
        "zhipuai_base_url": fake.base_url,
        "zhipuai_retry_backoff_seconds": 0.01,
        "zhipuai_max_retries": 3,
        "zhipuai_timeout_seconds": 5,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
async def llm(zhipu: FakeZhipu) -> AsyncIterator[ZhipuClient]:
    client = ZhipuClient(llm_settings(zhipu))
    yield client
    await client.close()


async def test_chat_returns_content_and_usage_and_logs_tokens(
    llm: ZhipuClient, zhipu: FakeZhipu, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = uuid.uuid4()
    with caplog.at_level(logging.INFO, logger="switchyard.services.llm"):
        result = await llm.chat(
            tenant,
            [ChatMessage(role="system", content="be brief"), *USER],
            temperature=0.2,
            max_tokens=50,
        )
    assert result.content == "echo: hello there"
    assert result.model == "glm-4-flash"
    assert result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 3)
    sent = zhipu.requests[-1]
    assert sent.path == "/api/paas/v4/chat/completions"
    assert sent.authorization == f"Bearer {API_KEY}"
    assert sent.body == {
        "model": "glm-4-flash",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        "stream": False,
        "temperature": 0.2,
        "max_tokens": 50,
    }
    usage = [r for r in caplog.records if r.getMessage() == "llm usage"]
    assert len(usage) == 1
    assert usage[0].total_tokens == 7  # type: ignore[attr-defined]
    assert usage[0].tenant_id == str(tenant)  # type: ignore[attr-defined]
    assert API_KEY not in caplog.text


async def test_streamed_chat_yields_deltas_then_usage(llm: ZhipuClient, zhipu: FakeZhipu) -> None:
    zhipu.reply = "one two three"
    chunks = [c async for c in llm.chat_stream(uuid.uuid4(), USER, model="glm-4-plus")]
    assert "".join(c.delta for c in chunks) == "one two three"
    assert [c.delta for c in chunks if c.delta] == ["one", " two", " three"]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert zhipu.requests[-1].body["stream"] is True
    assert zhipu.requests[-1].body["model"] == "glm-4-plus"


async def test_embeddings_in_order_and_in_batches(llm: ZhipuClient, zhipu: FakeZhipu) -> None:
    texts = [f"text number {i}" for i in range(EMBEDDING_BATCH + 6)]
    result = await llm.embed(uuid.uuid4(), texts)
    assert len(result.vectors) == len(texts)
    assert result.vectors[70 - 1] == pytest.approx(embed(texts[69]))
    assert [len(r.body["input"]) for r in zhipu.requests] == [EMBEDDING_BATCH, 6]
    assert all(r.path == "/api/paas/v4/embeddings" for r in zhipu.requests)
    assert result.usage.prompt_tokens == 3 * len(texts)


async def test_embedding_dimensions_come_from_settings(zhipu: FakeZhipu) -> None:
    client = ZhipuClient(llm_settings(zhipu, zhipuai_embedding_dimensions=256))
    result = await client.embed(uuid.uuid4(), ["sized"])
    await client.close()
    assert len(result.vectors[0]) == 256
    assert zhipu.requests[-1].body["dimensions"] == 256


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retries_rate_limits_and_server_errors(
    llm: ZhipuClient, zhipu: FakeZhipu, status: int
) -> None:
    zhipu.fail_next(status, times=2, code="1302", message="busy")
    result = await llm.chat(uuid.uuid4(), USER)
    assert result.content == "echo: hello there"
    assert len(zhipu.requests) == 3


async def test_retry_after_is_honoured(llm: ZhipuClient, zhipu: FakeZhipu) -> None:
    zhipu.fail_next(429, retry_after=1)
    started = asyncio.get_running_loop().time()
    await llm.embed(uuid.uuid4(), ["x"])
    assert asyncio.get_running_loop().time() - started >= 0.9


async def test_streamed_chat_retries_before_the_first_chunk(
    llm: ZhipuClient, zhipu: FakeZhipu
) -> None:
    zhipu.fail_next(502)
    chunks = [c.delta async for c in llm.chat_stream(uuid.uuid4(), USER)]
    assert "".join(chunks) == "echo: hello there"
    assert len(zhipu.requests) == 2


async def test_errors_after_retries_become_problems(llm: ZhipuClient, zhipu: FakeZhipu) -> None:
    zhipu.fail_next(429, times=4, code="1302", message="rate limit reached", retry_after=0)
    with pytest.raises(LLMBusyError) as busy:
        await llm.chat(uuid.uuid4(), USER)
    assert busy.value.status == 503
    assert "rate limit reached (code 1302)" in busy.value.detail
    assert busy.value.headers == {"Retry-After": "5"}
    assert len(zhipu.requests) == 4  # 1 + ZHIPUAI_MAX_RETRIES

    zhipu.reset()
    zhipu.fail_next(400, code="1214", message="messages 参数非法")
    with pytest.raises(LLMRequestError) as rejected:
        await llm.chat(uuid.uuid4(), USER)
    assert rejected.value.status == 422
    assert len(zhipu.requests) == 1  # a 400 is not retried

    zhipu.reset()
    zhipu.fail_next(500, times=4)
    with pytest.raises(LLMError) as failed:
        [c async for c in llm.chat_stream(uuid.uuid4(), USER)]
    assert failed.value.status == 502


async def test_a_stream_that_is_not_server_sent_events_is_an_error(
    llm: ZhipuClient, zhipu: FakeZhipu
) -> None:
    zhipu.stream_media_type = "application/json"
    with pytest.raises(LLMError) as broken:
        [c async for c in llm.chat_stream(uuid.uuid4(), USER)]
    assert broken.value.status == 502
    assert str(broken.value) == (
        "Zhipu answered a stream as application/json, not server-sent events"
    )


async def test_a_wrong_key_is_reported_without_the_key(zhipu: FakeZhipu) -> None:
    client = ZhipuClient(llm_settings(zhipu, zhipuai_api_key="wrong-key-123"))
    with pytest.raises(LLMError) as refused:
        await client.chat(uuid.uuid4(), USER)
    await client.close()
    assert "401" in refused.value.detail
    assert "ZHIPUAI_API_KEY" in refused.value.detail
    assert "wrong-key-123" not in refused.value.detail
    assert len(zhipu.requests) == 1


async def test_timeouts_are_retried_then_reported(zhipu: FakeZhipu) -> None:
    zhipu.delay = 1.0
    client = ZhipuClient(llm_settings(zhipu, zhipuai_timeout_seconds=0.2, zhipuai_max_retries=1))
    with pytest.raises(LLMTimeoutError) as late:
        await client.chat(uuid.uuid4(), USER)
    await client.close()
    assert late.value.status == 504
    # Both attempts were sent; the fake (a thread of its own) may log the second a moment
    # after the client gave up on it, on a busy machine.
    for _ in range(100):
        if len(zhipu.requests) >= 2:
            break
        await asyncio.sleep(0.02)
    assert len(zhipu.requests) == 2


async def test_tenant_concurrency_is_capped_per_tenant(zhipu: FakeZhipu) -> None:
    for _ in range(100):  # requests an earlier test abandoned may still be open
        if zhipu.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    zhipu.max_in_flight = 0
    zhipu.delay = 0.2
    client = ZhipuClient(llm_settings(zhipu, zhipuai_tenant_concurrency=2))
    tenant, other = uuid.uuid4(), uuid.uuid4()
    await asyncio.gather(*(client.chat(tenant, USER) for _ in range(6)))
    assert zhipu.max_in_flight == 2
    assert client._slots._slots == {}  # idle tenants hold no semaphore

    zhipu.max_in_flight = 0
    await asyncio.gather(*(client.chat(t, USER) for t in (tenant, tenant, other, other)))
    assert zhipu.max_in_flight == 4
    await client.close()


async def test_probe_checks_the_key_without_a_paid_call(llm: ZhipuClient, zhipu: FakeZhipu) -> None:
    await llm.probe()
    assert [request.path for request in zhipu.probes] == ["/api/paas/v4/files"]
    assert zhipu.requests == []  # no completion, no embedding: nothing paid
    wrong_key = ZhipuClient(llm_settings(zhipu, zhipuai_api_key="not-the-key"))
    with pytest.raises(LLMError, match=r"^auth failed: .*ZHIPUAI_API_KEY"):
        await wrong_key.probe()
    await wrong_key.close()
    unreachable = ZhipuClient(
        Settings(zhipuai_api_key="k", zhipuai_base_url="http://127.0.0.1:9/api/paas/v4/")
    )
    with pytest.raises(Exception, match=r"(?i)connect"):
        await unreachable.probe()
    await unreachable.close()


def test_without_a_key_llm_is_disabled() -> None:
    assert create_llm(Settings()) is None
    with pytest.raises(LLMDisabledError) as disabled:
        ZhipuClient(Settings())
    assert disabled.value.status == 503
    assert "ZHIPUAI_API_KEY" in disabled.value.detail
