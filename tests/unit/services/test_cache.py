from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from switchyard.services import redis as redis_service
from switchyard.services.cache import Cache
from switchyard.settings import Settings


def errors(operation: str) -> float:
    value = REGISTRY.get_sample_value("switchyard_cache_errors_total", {"operation": operation})
    return value or 0.0


async def test_down_redis_degrades_to_a_miss_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(_env_file=None, redis_socket_timeout_seconds=0.2)
    client = redis_service.create_client(settings, "redis://127.0.0.1:1/0")
    cache = Cache(client, "test")
    before = {op: errors(op) for op in ("get", "set", "incr", "exists", "delete", "expire")}
    assert await cache.get("k") is None
    assert await cache.set("k", "v", ttl_seconds=5) is False
    assert await cache.incr("k") is None
    assert await cache.exists("k") is False
    assert await cache.delete("k") is False
    assert await cache.expire("k", 5) is False
    await client.aclose()
    for operation, count in before.items():
        assert errors(operation) == count + 1, operation
    assert "treated as a miss" in caplog.text


async def test_without_redis_everything_is_a_miss() -> None:
    cache = Cache(None, "test")
    assert await cache.get("k") is None
    assert await cache.set("k", "v") is False
    assert await cache.incr("k") is None


async def test_the_breaker_opens_on_an_unreachable_redis_not_on_a_refused_command() -> None:
    from redis import exceptions as redis_errors

    from switchyard.services.redis import RedisBreaker, RedisUnavailableError

    breaker = RedisBreaker(object(), retry_seconds=3600)  # type: ignore[arg-type]

    async def refused(_: object) -> None:
        raise redis_errors.ResponseError("WRONGTYPE Operation against a key")

    async def silent(_: object) -> None:
        raise redis_errors.TimeoutError("Timeout reading from socket")

    def is_open() -> bool:
        return breaker.open_since is not None

    with pytest.raises(redis_errors.ResponseError):
        await breaker.call(refused)
    assert not is_open()
    with pytest.raises(redis_errors.TimeoutError):
        await breaker.call(silent)
    assert is_open()
    with pytest.raises(RedisUnavailableError):
        await breaker.call(refused)  # skipped: not even tried while open
    await breaker.close()
