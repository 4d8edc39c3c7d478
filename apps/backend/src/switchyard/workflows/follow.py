"""Following a workflow run live: a notice on Redis whenever its graph changes (a step's run
ended, a step became due, the run ended), and the graph read from the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent

from switchyard.errors import NotFoundError
from switchyard.platform import events
from switchyard.services.container import Services
from switchyard.tasks.follow import RESYNC_SECONDS, subscribe_to
from switchyard.workflows import service

# Notices within this long of each other make one event: a map of 10,000 items ends in a
# few hundred groups, not 10,000 reads of the graph.
COALESCE_SECONDS = 0.5


async def subscribe(services: Services, run_id: uuid.UUID) -> PubSub | None:
    channel = events.workflow_channel(services.settings.cache_namespace, run_id)
    return await subscribe_to(services, channel, f"/api/v1/workflows/runs/{run_id}")


async def _notice(pubsub: PubSub | None) -> None:
    """Until the graph may have changed: a notice, or RESYNC_SECONDS without one."""
    if pubsub is None:
        await asyncio.sleep(RESYNC_SECONDS)
        return
    try:
        if await pubsub.get_message(ignore_subscribe_messages=True, timeout=RESYNC_SECONDS):
            await asyncio.sleep(COALESCE_SECONDS)
            while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0):
                pass  # the notices of the same burst
    except RedisError:
        await asyncio.sleep(RESYNC_SECONDS)


async def follow(
    services: Services, tenant_id: uuid.UUID, run_id: uuid.UUID, pubsub: PubSub | None
) -> AsyncIterator[ServerSentEvent]:
    """With the run's channel subscribed, its graph now, then each time it changed, until the
    run has ended (the last event is the final graph)."""
    try:
        last = None
        while True:
            async with services.database_sessions() as session:
                view = await service.run_view(session, tenant_id, run_id)
            body = view.model_dump_json()
            if body != last:
                last = body
                yield ServerSentEvent(body, event="state")
            if view.state != "running":
                return
            await _notice(pubsub)
    except NotFoundError:  # deleted under retention meanwhile
        return
    finally:
        if pubsub is not None:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
