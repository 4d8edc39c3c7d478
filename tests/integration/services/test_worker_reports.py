"""Workers online (platform.workers) on the real Redis: a process's report is read back, one
gone quiet drops out of the list, one long stale is forgotten, and a stopping process leaves
at once."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from switchyard.platform import workers
from switchyard.services import redis as redis_service
from switchyard.services.cache import Cache
from tests.fixtures.gateway import SettingsFactory


@pytest.fixture
async def cache(make_settings: SettingsFactory, redis_url: str) -> AsyncIterator[Cache]:
    client = redis_service.create_client(make_settings(), redis_url)
    cache = Cache(client, f"workers-{uuid.uuid4().hex[:6]}")
    try:
        yield cache
    finally:
        await client.delete(cache.key(workers.REPORT_KEY))
        await client.aclose()


def stale_report(name: str, age: timedelta) -> str:
    return json.dumps(
        {
            "hostname": name,
            "pid": 1,
            "concurrency": 10,
            "in_flight": 3,
            "loop_lag_seconds": 0.001,
            "queues": ["default"],
            "seen_at": (datetime.now(UTC) - age).isoformat(),
        }
    )


async def test_reports_are_read_back_and_stale_ones_drop_out(cache: Cache) -> None:
    await workers.report(cache, 100, 7, 0.0123, ["default", "llm"])
    quiet = timedelta(seconds=workers.REPORT_FRESH_SECONDS + 5)
    gone = timedelta(seconds=workers.REPORT_FORGET_SECONDS + 5)
    await cache.put_field(workers.REPORT_KEY, "quiet:1", stale_report("quiet", quiet))
    await cache.put_field(workers.REPORT_KEY, "gone:1", stale_report("gone", gone))
    await cache.put_field(workers.REPORT_KEY, "garbled:1", "not json")

    [me] = await workers.online(cache)
    assert (me.pid, me.concurrency, me.in_flight) == (os.getpid(), 100, 7)
    assert me.loop_lag_seconds == pytest.approx(0.0123)
    assert me.queues == ["default", "llm"]
    # Quiet for a while: not online, but kept (it may come back); long gone or garbled: dropped.
    assert set(await cache.fields(workers.REPORT_KEY)) == {workers.me(), "quiet:1"}

    await workers.forget(cache)
    assert await workers.online(cache) == []
