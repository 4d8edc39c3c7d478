"""Traces (OpenTelemetry), off unless TRACING=true: then every role exports spans over OTLP/HTTP
(to OTEL_EXPORTER_OTLP_ENDPOINT, the SDK's own variables) — a span per request in the gateway,
a span per attempt in the worker as a child of the request that submitted the run (its W3C
`traceparent` kept with the run and carried in the message's headers), and spans for the
PostgreSQL statements, Redis commands, LLM calls and HTTP requests made inside them.

Off, nothing is imported or installed and each hook is one flag test: the hot paths pay nothing
(bench/RESULTS.md)."""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from switchyard import __version__

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

    from switchyard.settings import Settings

TRACEPARENT = "traceparent"
_tracer: Any = None
_connections_usage: Any = None


def enabled() -> bool:
    return _tracer is not None


def configure(settings: Settings, role: str) -> None:
    """Install the tracer provider and the client instrumentations, once per process."""
    global _tracer  # noqa: PLW0603 - one provider per process, by design
    if not settings.tracing or _tracer is not None:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"switchyard-{role}", "service.version": __version__}
        ),
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument()
    HTTPXClientInstrumentor().instrument()
    atexit.register(provider.shutdown)  # the last spans are sent before the process ends
    _tracer = trace.get_tracer("switchyard")


def instrument_engine(engine: AsyncEngine) -> None:
    """Spans for the engine's statements, engine by engine (the instrumentor's own
    `instrument(engine=...)` takes the first engine of a process only)."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    global _connections_usage  # noqa: PLW0603 - one instrument per process
    if _connections_usage is None:
        _connections_usage = get_meter("switchyard.sqlalchemy").create_up_down_counter(
            name="db.client.connections.usage", unit="connections"
        )
    EngineTracer(_tracer, engine.sync_engine, _connections_usage)  # type: ignore[no-untyped-call]


def instrument_app(app: FastAPI) -> None:
    """A server span per request (the health and metrics routes left out)."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="health,metrics")


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to keep with a run; None when tracing is off
    or no span is current."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get(TRACEPARENT)


@contextlib.contextmanager
def attempt_span(task: str, traceparent: str | None, attributes: dict[str, str]) -> Iterator[None]:
    """A span for one attempt of a run, the child of the request that submitted it."""
    if _tracer is None:
        yield
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract({TRACEPARENT: traceparent}) if traceparent else None
    with _tracer.start_as_current_span(
        f"run {task}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def span_context() -> Any:
    """The current span's context, for a link from a group call; None when off or none."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextlib.contextmanager
def group_span(name: str, linked: list[Any]) -> Iterator[None]:
    """A span for one call made for many callers (a group commit's statement), linked to each
    caller's span: a root of its own, since it belongs to no single caller's trace."""
    if _tracer is None:
        yield
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    links = [Link(context) for context in linked if context is not None]
    with _tracer.start_as_current_span(
        name, context=Context(), links=links, attributes={"switchyard.group_size": len(linked)}
    ):
        yield


def _no_usage(model: str, input_tokens: int, output_tokens: int) -> None:
    return None


@contextlib.contextmanager
def llm_span(
    operation: str, model: str, purpose: str, *, current: bool = True
) -> Iterator[Callable[[str, int, int], None]]:
    """A client span for one LLM call, retries included, named and described as OpenTelemetry's
    GenAI conventions say (`chat glm-4-flash`; gen_ai.* attributes); its HTTP requests are its
    children. Yields a function recording the model that answered and the tokens it reported.
    Not `current` (a stream, whose consumer runs between its chunks), it is the child of the
    current span and its HTTP request is not its own."""
    if _tracer is None:
        yield _no_usage
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "zhipu",
        "gen_ai.request.model": model,
        "switchyard.llm.purpose": purpose,
    }
    name = f"{operation} {model}"
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def usage(answered_by: str, input_tokens: int, output_tokens: int) -> None:
        span.set_attribute("gen_ai.response.model", answered_by)
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)

    try:
        if current:
            from opentelemetry.trace import use_span

            with use_span(span, end_on_exit=False, record_exception=False):
                yield usage
        else:
            yield usage
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()
