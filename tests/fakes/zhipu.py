"""A local fake of Zhipu's open platform HTTP API (v4), from its documented shapes.

POST {base}/chat/completions (plain, and `stream: true` as server-sent events ending in
`data: [DONE]`) and POST {base}/embeddings; errors as `{"error": {"code", "message"}}` with
the HTTP status Zhipu uses (401 bad key, 429 rate limited, 5xx). Embeddings are a hashing
of the words, so texts that share words are near each other, as real embeddings would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fixtures.servers import free_port

API_KEY = "fake-zhipu-key.0123456789"
BASE_PATH = "/api/paas/v4"
DEFAULT_DIMENSIONS = 64


@dataclass
class Failure:
    status: int
    code: str
    message: str
    retry_after: int | None = None


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    authorization: str | None


def embed(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    vector = [0.0] * dimensions
    for raw in text.lower().split():
        word = raw.strip(".,;:!?\"'()")
        if not word:
            continue
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


@dataclass
class FakeZhipu:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    api_key: str = API_KEY
    failures: deque[Failure] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    # The health probes (the account's files, free), apart: a role probes at start and on
    # every /health, at times a test does not choose.
    probes: list[Recorded] = field(default_factory=list)
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    reply: str | None = None
    # What a streamed answer is sent as; anything but text/event-stream is a broken upstream.
    stream_media_type: str = "text/event-stream"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{BASE_PATH}/"

    def reset(self) -> None:
        self.failures.clear()
        self.requests.clear()
        self.probes.clear()
        self.delay = 0.0
        self.max_in_flight = 0  # in_flight stays: a late request of an earlier test may be open
        self.reply = None
        self.stream_media_type = "text/event-stream"

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        code: str = "1234",
        message: str = "failure",
        retry_after: int | None = None,
    ) -> None:
        for _ in range(times):
            self.failures.append(Failure(status, code, message, retry_after))

    async def _enter(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body = await request.json()
        authorization = request.headers.get("authorization")
        self.requests.append(Recorded(request.url.path, body, authorization))
        if authorization != f"Bearer {self.api_key}":
            return body, _error(401, "1000", "身份验证失败。")
        if self.failures:
            failure = self.failures.popleft()
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            return body, _error(failure.status, failure.code, failure.message, headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return body, None

    async def chat(self, request: Request) -> Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        messages = body.get("messages") or []
        if not messages or not body.get("model"):
            return _error(400, "1214", "messages 参数非法。")
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        last = str(messages[-1].get("content", ""))
        content = self.reply if self.reply is not None else f"echo: {last}"
        usage = {
            "prompt_tokens": _tokens(prompt),
            "completion_tokens": _tokens(content),
            "total_tokens": _tokens(prompt) + _tokens(content),
        }
        ident = uuid.uuid4().hex
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(
                self._stream(ident, created, body["model"], content, usage),
                media_type=self.stream_media_type,
            )
        return JSONResponse(
            {
                "id": ident,
                "request_id": ident,
                "created": created,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self, ident: str, created: int, model: str, content: str, usage: dict[str, int]
    ) -> AsyncIterator[str]:
        words = content.split(" ")
        yield ": keep-alive\n\n"  # an SSE comment, as proxies and servers send: no event
        for position, word in enumerate(words):
            piece = word if position == 0 else f" {word}"
            chunk = {
                "id": ident,
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}}],
            }
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        final = {
            "id": ident,
            "created": created,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "delta": {"role": "assistant"}}],
            "usage": usage,
        }
        yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return _error(400, "1214", "input 参数非法。")
        dimensions = int(body.get("dimensions") or DEFAULT_DIMENSIONS)
        tokens = sum(_tokens(t) for t in texts)
        return JSONResponse(
            {
                "model": body.get("model"),
                "object": "list",
                "data": [
                    {"index": i, "object": "embedding", "embedding": embed(t, dimensions)}
                    for i, t in enumerate(texts)
                ],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
            }
        )

    async def files(self, request: Request) -> Response:
        """The account's files (none): what the health probe asks, free, to check the key."""
        authorization = request.headers.get("authorization")
        self.probes.append(Recorded(request.url.path, {}, authorization))
        if authorization != f"Bearer {self.api_key}":
            return _error(401, "1000", "身份验证失败。")
        return JSONResponse({"object": "list", "data": []})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(f"{BASE_PATH}/chat/completions", self.chat, methods=["POST"]),
                Route(f"{BASE_PATH}/embeddings", self.embeddings, methods=["POST"]),
                Route(f"{BASE_PATH}/files", self.files, methods=["GET"]),
            ]
        )

    def start(self) -> None:
        config = uvicorn.Config(
            self.app(), host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Zhipu server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )
