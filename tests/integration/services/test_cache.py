from __future__ import annotations

import asyncio
import uuid

from switchyard.services import redis as redis_service
from switchyard.services.cache import Cache
from tests.fixtures.gateway import SettingsFactory


async def test_cache_round_trip_with_namespace_and_ttl(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    settings = make_settings()
    client = redis_service.create_client(settings, redis_url)
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    cache = Cache(client, namespace)
    try:
        assert await cache.set("greeting", "hello", ttl_seconds=0.3)
        assert await client.get(f"{namespace}:cache:greeting") == b"hello"
        assert await cache.get("greeting") == b"hello"
        assert await cache.exists("greeting")
        await asyncio.sleep(0.5)
        assert await cache.get("greeting") is None
        assert await cache.incr("hits", ttl_seconds=60) == 1
        assert await cache.incr("hits", 2) == 3
        assert 0 < await client.pttl(f"{namespace}:cache:hits") <= 60_000
        assert await cache.expire("hits", 1)
        assert await cache.delete("hits")
        assert not await cache.exists("hits")
    finally:
        await client.aclose()
