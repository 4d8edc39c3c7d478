"""Zhipu GLM over its HTTP API (v4): chat completions, plain and streamed, and embeddings.

httpx against the documented API rather than the `zhipuai` SDK, which is synchronous only.
Requests are retried with exponential backoff (honouring Retry-After) on 429, 5xx and
transport errors; a tenant has at most ZHIPUAI_TENANT_CONCURRENCY requests in flight in one
process; every answer's token usage is logged and counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
from httpx_sse import EventSource, SSEError
from prometheus_client import Counter
from pydantic import BaseModel, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from switchyard import tracing
from switchyard.errors import ServiceUnavailableError, SwitchyardError
from switchyard.services.quotas import LlmBudget, Reservation
from switchyard.services.usage import Meter, Use
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

EMBEDDING_BATCH: Final = 64
MAX_RETRY_AFTER_SECONDS: Final = 30.0
MAX_ERROR_TEXT: Final = 300
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

TOKENS = Counter(
    "switchyard_llm_tokens_total",
    "Tokens used by LLM requests",
    ["model", "operation", "kind"],
)
REQUESTS = Counter(
    "switchyard_llm_requests_total",
    "LLM requests by outcome",
    ["operation", "outcome"],
)


class LLMDisabledError(ServiceUnavailableError):
    code = "llm_disabled"

    def __init__(self) -> None:
        super().__init__("LLM features need ZHIPUAI_API_KEY, which is not set.")


class LLMError(SwitchyardError):
    """The provider failed or refused; the detail says how."""

    status = 502
    code = "llm_error"
    title = "LLM provider error"


class LLMAuthError(LLMError):
    """The provider refused the key (health: `auth failed`)."""

    code = "llm_auth_failed"


class LLMBusyError(LLMError):
    status = 503
    code = "llm_rate_limited"
    title = "LLM provider rate limit"


class LLMTimeoutError(LLMError):
    status = 504
    code = "llm_timeout"
    title = "LLM provider timeout"


class LLMRequestError(LLMError):
    status = 422
    code = "llm_rejected_input"
    title = "LLM provider rejected the input"


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=200_000)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def parse(cls, data: Any) -> Usage:
        if not isinstance(data, dict):
            return cls()
        return cls(
            int(data.get("prompt_tokens") or 0),
            int(data.get("completion_tokens") or 0),
            int(data.get("total_tokens") or 0),
        )


@dataclass(frozen=True)
class ChatResult:
    content: str
    model: str
    finish_reason: str | None
    usage: Usage
    request_id: str | None


@dataclass(frozen=True)
class ChatChunk:
    delta: str
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    model: str
    usage: Usage


class _Upstream(Exception):  # noqa: N818 - internal signal, turned into an LLMError
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _Upstream):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, httpx.TransportError)


def _upstream_error(response: httpx.Response, body: bytes) -> _Upstream:
    message = body.decode("utf-8", "replace")[:MAX_ERROR_TEXT]
    try:
        error = json.loads(body).get("error") or {}
        message = f"{error.get('message', '')} (code {error.get('code', '?')})"
    except (ValueError, AttributeError):
        pass
    retry_after = None
    header = response.headers.get("retry-after")
    if header:
        try:
            retry_after = min(float(header), MAX_RETRY_AFTER_SECONDS)
        except ValueError:
            retry_after = None
    return _Upstream(response.status_code, message, retry_after)


def _as_error(exc: BaseException, timeout: float) -> LLMError:
    if isinstance(exc, httpx.TimeoutException):
        return LLMTimeoutError(f"Zhipu did not answer within {timeout:g} s")
    if isinstance(exc, httpx.TransportError):
        return LLMError(f"Zhipu could not be reached: {type(exc).__name__}")
    assert isinstance(exc, _Upstream)
    text = f"Zhipu answered {exc.status}: {exc.message}"
    if exc.status == 429:
        retry = str(int(exc.retry_after or 5))
        return LLMBusyError(text, headers={"Retry-After": retry})
    if exc.status in (401, 403):
        return LLMError(f"{text}; check ZHIPUAI_API_KEY")
    if 400 <= exc.status < 500:
        return LLMRequestError(text)
    return LLMError(text)


@dataclass
class _Spend:
    """One call's reservation, settled once with what it spent."""

    budget: LlmBudget | None
    reservation: Reservation | None
    settled: bool = False

    async def done(self, *uses: Use) -> None:
        self.settled = True
        if self.budget is not None:
            await self.budget.settle(self.reservation, list(uses))


class _TenantSlots:
    """One semaphore per tenant with requests in flight; idle tenants hold nothing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[uuid.UUID, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def hold(self, tenant_id: uuid.UUID) -> AsyncIterator[None]:
        semaphore, users = self._slots.get(tenant_id, (asyncio.Semaphore(self.limit), 0))
        self._slots[tenant_id] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[tenant_id]
            if users == 1:
                del self._slots[tenant_id]
            else:
                self._slots[tenant_id] = (semaphore, users - 1)


class ZhipuClient:
    """The production client; tests point `base_url` at a local fake of the same API."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        budget: LlmBudget | None = None,
    ):
        if settings.zhipuai_api_key is None:
            raise LLMDisabledError
        self.settings = settings
        # Each call's tokens reserved against its tenant's budget first, and recorded as its
        # usage after (services.quotas); without one, a call is neither guarded nor recorded.
        self.budget = budget
        self.chat_model = settings.zhipuai_chat_model
        self.embedding_model = settings.zhipuai_embedding_model
        self.timeout = settings.zhipuai_timeout_seconds
        self._slots = _TenantSlots(settings.zhipuai_tenant_concurrency)
        self._http = httpx.AsyncClient(
            base_url=settings.zhipuai_base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {settings.zhipuai_api_key.get_secret_value()}"},
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0)),
            transport=transport,
        )

    def _retrying(self) -> AsyncRetrying:
        backoff = wait_exponential_jitter(
            multiplier=self.settings.zhipuai_retry_backoff_seconds,
            jitter=self.settings.zhipuai_retry_backoff_seconds,
            max=8.0,
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Upstream) and exc.retry_after is not None:
                return exc.retry_after
            return float(backoff(state))

        return AsyncRetrying(
            stop=stop_after_attempt(self.settings.zhipuai_max_retries + 1),
            wait=wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )

    async def _post(self, operation: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async for attempt in self._retrying():
                with attempt:
                    response = await self._http.post(path, json=body)
                    if response.status_code >= 400:
                        raise _upstream_error(response, response.content)
                    data: dict[str, Any] = response.json()
        except (_Upstream, httpx.TransportError) as exc:
            REQUESTS.labels(operation, "error").inc()
            raise _as_error(exc, self.timeout) from None
        REQUESTS.labels(operation, "ok").inc()
        return data

    @asynccontextmanager
    async def _spending(self, tenant_id: uuid.UUID, tokens: int) -> AsyncIterator[_Spend]:
        """A call that may spend up to `tokens`: reserved against the tenant's budget before
        it starts (QuotaExceededError when spent), its actual tokens recorded by `_Spend.done`
        once it answered, its reservation released if it fails."""
        spend = _Spend(self.budget, await self._reserve(tenant_id, tokens))
        try:
            yield spend
        finally:
            if not spend.settled and self.budget is not None:
                await self.budget.release(spend.reservation)

    async def _reserve(self, tenant_id: uuid.UUID, tokens: int) -> Reservation | None:
        return await self.budget.reserve(tenant_id, tokens) if self.budget is not None else None

    def _chat_bound(self, body: dict[str, Any]) -> int:
        """At most the tokens a chat can spend: a token is at least one byte of the prompt
        (byte-level tokenizers), plus a few per message, plus the completion's max_tokens
        (ZHIPUAI_MAX_COMPLETION_TOKENS when the call sets none)."""
        prompt = sum(len(m["content"].encode()) + 8 for m in body["messages"])
        return prompt + int(body.get("max_tokens") or self.settings.zhipuai_max_completion_tokens)

    async def _spent(
        self,
        spend: _Spend,
        purpose: str,
        tenant_id: uuid.UUID,
        model: str,
        usage: Usage,
        started: float,
    ) -> None:
        """A chat's tokens, as the provider reported them: logged, counted, and recorded as
        the tenant's usage (by purpose and model) in place of its reservation."""
        self._log_usage(purpose, tenant_id, model, usage, started)
        subject = f"{purpose}/{model}"
        await spend.done(
            Use(tenant_id, Meter.LLM_PROMPT_TOKENS, subject, usage.prompt_tokens),
            Use(tenant_id, Meter.LLM_COMPLETION_TOKENS, subject, usage.completion_tokens),
        )

    def _log_usage(
        self, operation: str, tenant_id: uuid.UUID, model: str, usage: Usage, started: float
    ) -> None:
        TOKENS.labels(model, operation, "prompt").inc(usage.prompt_tokens)
        TOKENS.labels(model, operation, "completion").inc(usage.completion_tokens)
        logger.info(
            "llm usage",
            extra={
                "operation": operation,
                "tenant_id": str(tenant_id),
                "model": model,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def _chat_body(
        self,
        messages: Sequence[ChatMessage],
        model: str | None,
        temperature: float | None,
        max_tokens: int | None,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model or self.chat_model,
            "messages": [message.model_dump() for message in messages],
            "stream": stream,
        }
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body

    async def chat(
        self,
        tenant_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        purpose: str = "chat",
    ) -> ChatResult:
        """`purpose` names what the tokens were for in the tenant's usage (chat, answer,
        entities)."""
        body = self._chat_body(messages, model, temperature, max_tokens, stream=False)
        started = time.perf_counter()
        async with self._spending(tenant_id, self._chat_bound(body)) as spend:
            with tracing.llm_span("chat", body["model"], purpose) as traced:
                async with self._slots.hold(tenant_id):
                    data = await self._post("chat", "chat/completions", body)
                try:
                    choice = data["choices"][0]
                    result = ChatResult(
                        content=choice["message"].get("content") or "",
                        model=data.get("model") or body["model"],
                        finish_reason=choice.get("finish_reason"),
                        usage=Usage.parse(data.get("usage")),
                        request_id=data.get("request_id") or data.get("id"),
                    )
                except (KeyError, IndexError, TypeError, AttributeError):
                    raise LLMError("Zhipu answered a chat completion without choices") from None
                traced(result.model, result.usage.prompt_tokens, result.usage.completion_tokens)
            await self._spent(spend, purpose, tenant_id, result.model, result.usage, started)
        return result

    async def chat_stream(
        self,
        tenant_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        purpose: str = "chat",
    ) -> AsyncGenerator[ChatChunk]:
        """Deltas as they arrive; a failure before the first one is retried like `chat`. The
        usage the last chunk reports is recorded once the stream ends."""
        body = self._chat_body(messages, model, temperature, max_tokens, stream=True)
        started = time.perf_counter()
        usage = Usage()
        async with self._spending(tenant_id, self._chat_bound(body)) as spend:
            async with self._slots.hold(tenant_id):
                with tracing.llm_span("chat", body["model"], purpose, current=False) as traced:
                    try:
                        async for attempt in self._retrying():
                            with attempt:
                                request = self._http.build_request(
                                    "POST", "chat/completions", json=body
                                )
                                response = await self._http.send(request, stream=True)
                                if response.status_code >= 400:
                                    content = await response.aread()
                                    await response.aclose()
                                    raise _upstream_error(response, content)
                    except (_Upstream, httpx.TransportError) as exc:
                        REQUESTS.labels("chat_stream", "error").inc()
                        raise _as_error(exc, self.timeout) from None
                    try:
                        async for event in EventSource(response).aiter_sse():
                            payload = event.data.strip()
                            if not payload:
                                continue  # an event without data (a keep-alive)
                            if payload == "[DONE]":
                                break
                            chunk = _parse_chunk(payload)
                            if chunk.usage is not None:
                                usage = chunk.usage
                            if chunk.delta or chunk.finish_reason or chunk.usage:
                                yield chunk
                    except SSEError:  # before TransportError, which it subclasses
                        REQUESTS.labels("chat_stream", "error").inc()
                        kind = response.headers.get("content-type", "no content type")
                        raise LLMError(
                            f"Zhipu answered a stream as {kind}, not server-sent events"
                        ) from None
                    except httpx.TransportError as exc:
                        REQUESTS.labels("chat_stream", "error").inc()
                        raise _as_error(exc, self.timeout) from None
                    finally:
                        await response.aclose()
                    traced(body["model"], usage.prompt_tokens, usage.completion_tokens)
            REQUESTS.labels("chat_stream", "ok").inc()
            await self._spent(spend, purpose, tenant_id, body["model"], usage, started)

    async def embed(self, tenant_id: uuid.UUID, texts: Sequence[str]) -> Embeddings:
        """One vector per text, in order; long lists go in batches of 64."""
        vectors: list[list[float]] = []
        prompt = total = 0
        started = time.perf_counter()
        for start in range(0, len(texts), EMBEDDING_BATCH):
            batch = list(texts[start : start + EMBEDDING_BATCH])
            body: dict[str, Any] = {"model": self.embedding_model, "input": batch}
            if self.settings.zhipuai_embedding_dimensions:
                body["dimensions"] = self.settings.zhipuai_embedding_dimensions
            # Each batch reserved and recorded as it is spent: a later one may fail.
            bound = sum(len(text.encode()) + 2 for text in batch)
            async with self._spending(tenant_id, bound) as spend:
                with tracing.llm_span("embeddings", self.embedding_model, "embeddings") as traced:
                    async with self._slots.hold(tenant_id):
                        data = await self._post("embeddings", "embeddings", body)
                    traced(
                        str(data.get("model") or self.embedding_model),
                        Usage.parse(data.get("usage")).prompt_tokens,
                        0,
                    )
                try:
                    items = sorted(data["data"], key=lambda item: item["index"])
                    vectors.extend([float(v) for v in item["embedding"]] for item in items)
                except (KeyError, TypeError, ValueError):
                    raise LLMError("Zhipu answered embeddings without data") from None
                if len(items) != len(batch):
                    raise LLMError(f"Zhipu answered {len(items)} embeddings for {len(batch)} texts")
                usage = Usage.parse(data.get("usage"))
                prompt += usage.prompt_tokens
                total += usage.total_tokens
                model = self.embedding_model
                await spend.done(
                    Use(tenant_id, Meter.EMBEDDING_TOKENS, model, usage.total_tokens),
                    Use(tenant_id, Meter.EMBEDDING_TEXTS, f"zhipu-{model}", len(batch)),
                )
        result = Embeddings(vectors, self.embedding_model, Usage(prompt, 0, total))
        self._log_usage("embeddings", tenant_id, self.embedding_model, result.usage, started)
        return result

    async def probe(self) -> None:
        """The host and the key, with a call that costs nothing: listing the account's files
        (`GET files`). A key the API refuses (401, 403) is `auth failed`; an error of its own
        (5xx) is down; any other answer means the key was accepted."""
        response = await self._http.get("files", params={"limit": 1}, timeout=5.0)
        if response.status_code in (401, 403):
            raise LLMAuthError(
                f"auth failed: the Zhipu API refused ZHIPUAI_API_KEY ({response.status_code})"
            )
        if response.status_code >= 500:
            raise LLMError(f"Zhipu answered {response.status_code}")

    async def close(self) -> None:
        await self._http.aclose()


def _parse_chunk(payload: str) -> ChatChunk:
    try:
        data = json.loads(payload)
        choice = (data.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        usage = Usage.parse(data["usage"]) if data.get("usage") else None
        return ChatChunk(delta.get("content") or "", choice.get("finish_reason"), usage)
    except (ValueError, AttributeError, IndexError, TypeError):
        raise LLMError("Zhipu streamed a chunk that is not JSON") from None


def create_llm(settings: Settings, budget: LlmBudget | None = None) -> ZhipuClient | None:
    return ZhipuClient(settings, budget=budget) if settings.zhipuai_api_key is not None else None
