"""Run events go out through the process's Announcer on the real Redis: in the order given,
in pipelines, without the caller waiting; a stopping process sends what is queued; a silent
Redis or a flood costs no caller anything (skipped, or dropped and counted)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from switchyard.db.models import RunState
from switchyard.platform import events
from switchyard.services import redis as redis_service
from switchyard.services.redis import Announcer, RedisBreaker
from tests.fixtures.gateway import SettingsFactory


@pytest.fixture
async def client(make_settings: SettingsFactory, redis_url: str) -> AsyncIterator[Redis]:
    client = redis_service.create_client(make_settings(), redis_url)
    yield client
    await client.aclose()


def dropped() -> float:
    return REGISTRY.get_sample_value("switchyard_redis_announcements_dropped_total") or 0.0


class Change:
    def __init__(self, run_id: uuid.UUID, state: RunState, attempts: int) -> None:
        self.id, self.state, self.attempts = run_id, state, attempts


@asynccontextmanager
async def listening(client: Redis, channels: list[str]) -> AsyncIterator[PubSub]:
    """A subscription to `channels`, confirmed: nothing published after it is missed."""
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(*channels)
        await _confirmed(pubsub, len(channels))
        yield pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


async def _confirmed(pubsub: PubSub, channels: int) -> None:
    confirmed = 0
    while confirmed < channels:
        message = await pubsub.get_message(timeout=5)
        assert message is not None, "no subscription confirmed"
        confirmed += message["type"] == "subscribe"


async def collect(pubsub: PubSub, count: int, within: float = 10) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < count:
        assert loop.time() < deadline, f"only {len(got)} of {count} events arrived"
        message = await pubsub.get_message(timeout=1)
        if message is not None and message["type"] == "message":
            got.append((message["channel"].decode(), message["data"].decode()))
    return got


async def test_events_arrive_in_the_order_given_without_the_callers_waiting(
    client: Redis, cache_namespace: str
) -> None:
    runs = [uuid.uuid4() for _ in range(5)]
    channels = [events.channel(cache_namespace, run_id) for run_id in runs]
    async with listening(client, channels) as pubsub:
        announcer = Announcer(RedisBreaker(client))
        # Each run: started, then succeeded, 300 times over (3,000 events), queued with no await
        # in between: the announcer sends them in pipelines, one at a time.
        for attempt in range(1, 301):
            for run_id in runs:
                events.publish(
                    announcer, cache_namespace, Change(run_id, RunState.STARTED, attempt)
                )
                events.publish(
                    announcer, cache_namespace, Change(run_id, RunState.SUCCEEDED, attempt)
                )
        got = await collect(pubsub, 3000)
        for run_id, name in zip(runs, channels, strict=True):
            seen = [events.decode(data) for channel, data in got if channel == name]
            assert [(e["state"], e["attempts"]) for e in seen if e is not None] == [
                (state, attempt)
                for attempt in range(1, 301)
                for state in (RunState.STARTED, RunState.SUCCEEDED)
            ], run_id
        await announcer.close()


async def test_a_stopping_process_sends_what_is_queued(client: Redis, cache_namespace: str) -> None:
    run_id = uuid.uuid4()
    async with listening(client, [events.channel(cache_namespace, run_id)]) as pubsub:
        announcer = Announcer(RedisBreaker(client))
        for attempt in range(1, 51):
            events.publish(announcer, cache_namespace, Change(run_id, RunState.RETRYING, attempt))
        await announcer.close()  # before the loop ran the sender once
        assert len(await collect(pubsub, 50, within=2)) == 50


async def test_a_flood_past_the_bound_is_dropped_and_counted_never_queued_without_end(
    client: Redis, cache_namespace: str
) -> None:
    run_id = uuid.uuid4()
    async with listening(client, [events.channel(cache_namespace, run_id)]) as pubsub:
        announcer = Announcer(RedisBreaker(client), most_pending=10)
        before = dropped()
        for attempt in range(1, 26):  # no await: the sender cannot run before all 25 are given
            events.publish(announcer, cache_namespace, Change(run_id, RunState.STARTED, attempt))
        assert dropped() == before + 15
        got = await collect(pubsub, 10)
        assert [events.decode(data)["attempts"] for _, data in got] == list(range(1, 11))  # type: ignore[index]
        await announcer.close()


async def test_a_silent_redis_costs_the_caller_nothing(make_settings: SettingsFactory) -> None:
    settings = make_settings(redis_socket_timeout_seconds=0.2)
    client = redis_service.create_client(settings, "redis://127.0.0.1:1/0")
    breaker = RedisBreaker(client, retry_seconds=3600)
    announcer = Announcer(breaker)
    before = dropped()
    events.publish(announcer, "test", Change(uuid.uuid4(), RunState.STARTED, 1))
    await announcer.close()
    assert breaker.open_since is not None  # the failed pipeline opened the breaker
    assert dropped() == before + 1
    events.publish(announcer, "test", Change(uuid.uuid4(), RunState.SUCCEEDED, 1))  # skipped
    assert dropped() == before + 1
    await breaker.close()
    await client.aclose()
