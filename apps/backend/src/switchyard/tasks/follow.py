"""Following a run live: Redis pub/sub for changes, the ledger for the starting point."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import Request
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from switchyard.db.models import FINAL_STATES, RunState
from switchyard.errors import ServiceUnavailableError
from switchyard.platform import events
from switchyard.platform.events import RunEvent
from switchyard.services.container import Services
from switchyard.services.outages import RETRY_AFTER_SECONDS
from switchyard.tasks import repository

RESYNC_SECONDS = 5.0
_RANK = {RunState.QUEUED: 0, RunState.SCHEDULED: 0, RunState.STARTED: 1, RunState.RETRYING: 2}


def _order(event: RunEvent) -> tuple[int, int]:
    """Later events sort higher: by attempt, then by place within the attempt."""
    return event["attempts"], _RANK.get(event["state"], 3)


async def _ledger(services: Services, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunEvent:
    async with services.database_sessions() as session:
        run = await repository.RunRepository(session, tenant_id).get(run_id)
    if run is None:
        raise LookupError(run_id)
    return events.run_event(run)


async def _next_message(pubsub: PubSub | None) -> RunEvent | None:
    if pubsub is None:
        await asyncio.sleep(RESYNC_SECONDS)
        return None
    try:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=RESYNC_SECONDS)
    except RedisError:
        await asyncio.sleep(RESYNC_SECONDS)
        return None
    if message is None or message.get("type") != "message":
        return None
    return events.decode(message["data"])


async def subscribe(services: Services, run_id: uuid.UUID) -> PubSub | None:
    """The run's change channel, subscribed before the stream answers, so that a Redis that is
    down is a 503 rather than a stream that breaks; None without Redis (the ledger is polled)."""
    channel = events.channel(services.settings.cache_namespace, run_id)
    return await subscribe_to(services, channel, f"/api/v1/tasks/{run_id}")


async def subscribe_to(services: Services, channel: str, instead: str) -> PubSub | None:
    """`channel`, subscribed (see subscribe); the 503 names what to GET (`instead`) meanwhile."""
    if services.redis is None:
        return None
    pubsub = services.redis.pubsub()
    try:
        await services.redis_breaker.call(lambda _: pubsub.subscribe(channel))
    except RedisError as exc:
        with contextlib.suppress(RedisError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        raise ServiceUnavailableError(
            f"Live events need Redis, which is unreachable; read the state with GET {instead} "
            "meanwhile.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from exc
    return pubsub


async def follow(
    services: Services, tenant_id: uuid.UUID, run_id: uuid.UUID, pubsub: PubSub | None
) -> AsyncIterator[ServerSentEvent]:
    """With the run's channel subscribed (see subscribe), read the ledger (so no change in
    between is missed), then relay each newer change; without news for a few seconds, or with
    Redis gone meanwhile, the ledger is read again."""
    try:
        last = await _ledger(services, tenant_id, run_id)
        yield ServerSentEvent(events.encode(last), event="state")
        while last["state"] not in FINAL_STATES:
            event = await _next_message(pubsub) or await _ledger(services, tenant_id, run_id)
            if _order(event) > _order(last):
                last = event
                yield ServerSentEvent(events.encode(event), event="state")
    except LookupError:
        return
    finally:
        if pubsub is not None:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


# What a stream sends as the server stops: reconnect (to another gateway) in about a second.
RECONNECT_MILLISECONDS = 1000
# A stopping gateway gives live streams this long to send their `reconnect` event and end
# (well within API_SHUTDOWN_GRACE_SECONDS); then they are cut.
SHUTDOWN_GRACE_SECONDS = 2.0


async def until_shutdown(
    stream: AsyncIterator[ServerSentEvent], shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    """`stream`'s events until it ends, or until the server stops (`shutdown`): then a last
    `reconnect` event, and the response ends as every response does, not cut mid-message."""
    iterator = aiter(stream)
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        while True:
            following = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
                yield ServerSentEvent(
                    json.dumps({"reason": "the server is stopping; reconnect"}),
                    event="reconnect",
                    retry=RECONNECT_MILLISECONDS,
                )
                return
            try:
                yield following.result()
            except StopAsyncIteration:
                return
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping


def live(
    request: Request, follow: Callable[[], AsyncIterator[ServerSentEvent]]
) -> EventSourceResponse:
    """The response of a live stream: `follow()`'s events until it ends, the client leaves, or
    the server stops (a last `reconnect` event, within SHUTDOWN_GRACE_SECONDS)."""
    shutdown = anyio.Event()  # set as the server stops (SIGTERM)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in until_shutdown(follow(), shutdown):
            if await request.is_disconnected():
                return
            yield event

    return EventSourceResponse(
        stream(), ping=15, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_SECONDS
    )
