"""Traces across processes: a real gateway and a real worker with TRACING=true export over
OTLP/HTTP to a receiver in the test (decoding the protobuf the collector would get). A run
submitted through the gateway gives one trace: the request's server span, the worker's span of
the attempt as its child (the traceparent kept with the run and carried in the message), and
the PostgreSQL statements of both inside their spans; a document's ingestion adds the LLM's
calls (GenAI spans) and their HTTP requests inside its attempt."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sqlalchemy.engine import URL

from tests.fakes.zhipu import FakeZhipu
from tests.fixtures.accounts import sign_up
from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import free_port
from tests.fixtures.stack import product_env
from tests.fixtures.tasks import start_worker_on

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each linked span


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.take(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {
                        a.key: a.value.string_value or a.value.int_value for a in span.attributes
                    }
                    with self.lock:
                        self.spans.append(
                            Span(
                                resource["service.name"],
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.name,
                                attributes,
                                tuple(
                                    (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                                ),
                            )
                        )

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]


def traced_env(receiver: Receiver) -> dict[str, str]:
    return {
        "TRACING": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fifth of a second
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


async def poll(what: str, check: Callable[[], Any], within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {within:g} s"
        await asyncio.sleep(0.2)
    return found


async def test_a_run_is_one_trace_from_the_request_to_the_attempt_and_its_statements(
    receiver: Receiver,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    own_broker: str,
    tmp_path: Path,
) -> None:
    traced = traced_env(receiver)
    port = free_port()
    gateway = start_role(
        "api-gateway", port, **{**task_env, "CELERY_BROKER_URL": own_broker, **traced}
    )
    gateway.wait_healthy()
    start_worker_on(start_role, task_env, own_broker, tmp_path / "worker", **traced)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        account = await sign_up(client, "Traced")
        accepted = await client.post(
            "/api/v1/tasks/run",
            json={"task": "system.echo", "payload": {"message": "traced"}},
            headers=account.headers,
        )
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["task_id"]

    def attempt() -> Span | None:
        with receiver.lock:
            found = [s for s in receiver.spans if s.attributes.get("switchyard.run_id") == run_id]
        return found[0] if found else None

    worker_span: Span = await poll("the worker's span of the attempt", attempt)
    assert worker_span.service == "switchyard-worker"
    assert worker_span.name == "run system.echo"
    assert worker_span.attributes["switchyard.task"] == "system.echo"

    def request_span() -> Span | None:
        spans = receiver.of_trace(worker_span.trace_id)
        parents = [s for s in spans if s.span_id == worker_span.parent_id]
        return parents[0] if parents else None

    # The attempt's parent is the request that submitted it, in the gateway's trace.
    request: Span = await poll("the submitting request's span, in the same trace", request_span)
    assert request.service == "switchyard-api-gateway"
    assert request.name == "POST /api/v1/tasks/run"
    assert (
        request.attributes.get(
            "http.status_code", request.attributes.get("http.response.status_code")
        )
        == 202
    )

    def under_groups_linked_to(span: Span, spans: list[Span]) -> list[Span]:
        """The statements of group calls (group commit) made for `span` among others."""
        groups = {s.span_id for s in spans if (span.trace_id, span.span_id) in s.links}
        return [
            s
            for s in spans
            if s.parent_id in groups and s.attributes.get("db.system") == "postgresql"
        ]

    def statements() -> tuple[list[Span], list[Span]] | None:
        with receiver.lock:
            spans = list(receiver.spans)
        in_gateway = under_groups_linked_to(request, spans)
        in_worker = under_groups_linked_to(worker_span, spans)
        stored = [s for s in in_gateway if "INSERT INTO task_runs" in s.attributes["db.statement"]]
        return (stored, in_worker) if stored and in_worker else None

    # Both sides' statements are spans: the gateway's insert of the run and the worker's claim
    # and outcome are made for many runs at once (group commit), so each is a span of the
    # group's call, which links to every request or attempt it served.
    _, in_worker = await poll("the run's insert and its attempt's statements", statements)
    assert all("task_runs" in s.attributes["db.statement"] for s in in_worker)
    # The request's own statements (its caller's lookup) are children in its trace.
    with receiver.lock:
        own = [
            s
            for s in receiver.spans
            if s.trace_id == request.trace_id and s.attributes.get("db.system") == "postgresql"
        ]
    assert own


async def test_the_llm_calls_of_a_run_are_spans_of_its_attempt_in_the_request_trace(
    receiver: Receiver,
    start_role: Callable[..., RunningRole],
    tmp_path: Path,
    database_url: URL,
    redis_url: str,
    own_broker: str,
    s3_endpoint: str,
    chroma_server: tuple[str, int],
    zhipu: FakeZhipu,
) -> None:
    env = product_env(
        database_url=database_url,
        redis_url=redis_url,
        broker=own_broker,
        s3_endpoint=s3_endpoint,
        chroma_server=chroma_server,
        zhipu=zhipu,
        name="traced",
        **traced_env(receiver),
    )
    gateway = start_role("api-gateway", free_port(), **env)
    worker = start_role("worker", **env, VAR_DIR=str(tmp_path / "worker"))
    gateway.wait_healthy()
    worker.wait_heartbeat(tmp_path / "worker" / "worker.heartbeat")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        account = await sign_up(client, "Traced LLM")
        uploaded = await client.post(
            "/api/v1/documents",
            files={"file": ("notes.md", b"# Notes\n\nThe Lisbon office opens at eight.\n")},
            headers=account.headers,
        )
    assert uploaded.status_code == 202, uploaded.text

    def ingest_attempt() -> Span | None:
        with receiver.lock:
            found = [
                s
                for s in receiver.spans
                if s.name == "run documents.ingest"
                and s.attributes.get("switchyard.tenant_id") == str(account.tenant_id)
            ]
        return found[0] if found else None

    attempt: Span = await poll("the ingestion's attempt span", ingest_attempt)

    def embedding_call() -> tuple[Span, list[Span], list[Span]] | None:
        spans = receiver.of_trace(attempt.trace_id)
        calls = [s for s in spans if s.parent_id == attempt.span_id and s.name.startswith("emb")]
        if not calls:
            return None
        requests = [s for s in spans if s.parent_id == calls[0].span_id]
        request = [s for s in spans if s.span_id == attempt.parent_id]
        return (calls[0], requests, request) if requests and request else None

    call, http_requests, [request] = await poll(
        "the embedding call and its request", embedding_call
    )
    model = env.get("ZHIPUAI_EMBEDDING_MODEL", "embedding-3")
    assert call.service == "switchyard-worker"
    assert call.name == f"embeddings {model}"
    assert call.attributes["gen_ai.operation.name"] == "embeddings"
    assert call.attributes["gen_ai.provider.name"] == "zhipu"
    assert call.attributes["gen_ai.request.model"] == model
    assert call.attributes["gen_ai.usage.input_tokens"] > 0  # what the fake reported
    # Its HTTP request, to the API, inside it; the attempt's parent is the upload's request.
    [http_request] = http_requests
    assert str(http_request.attributes.get("http.url", http_request.attributes.get("url.full")))
    assert zhipu.base_url.rstrip("/").split("//")[1] in str(
        http_request.attributes.get("http.url", http_request.attributes.get("url.full"))
    )
    assert request.service == "switchyard-api-gateway"
    assert request.name == "POST /api/v1/documents"
