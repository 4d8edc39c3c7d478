"""A namespaced cache on Redis that degrades to a miss, logged and counted, when Redis fails."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from switchyard.services.redis import RedisBreaker, RedisUnavailableError

logger = logging.getLogger(__name__)

CACHE_ERRORS = Counter(
    "switchyard_cache_errors_total",
    "Cache operations answered as a miss because Redis failed",
    ["operation"],
)

CACHE_LOOKUPS = Counter(
    "switchyard_cache_lookups_total",
    "Cache reads, by result (hit, miss; a failed read counts as a miss)",
    ["result"],
)

T = TypeVar("T")


class Cache:
    def __init__(
        self, client: Redis | None, namespace: str, breaker: RedisBreaker | None = None
    ) -> None:
        self.breaker = breaker or RedisBreaker(client)
        self.namespace = namespace

    def key(self, key: str) -> str:
        return f"{self.namespace}:cache:{key}"

    async def _attempt(self, operation: str, call: Callable[[Redis], Awaitable[T]], miss: T) -> T:
        if self.breaker.client is None:
            return miss
        try:
            return await self.breaker.call(call)
        except RedisUnavailableError:
            CACHE_ERRORS.labels(operation=operation).inc()
            return miss
        except RedisError as exc:
            CACHE_ERRORS.labels(operation=operation).inc()
            logger.warning(
                "cache %s failed; treated as a miss", operation, extra={"error": str(exc)}
            )
            return miss

    async def get(self, key: str) -> bytes | None:
        async def call(client: Redis) -> bytes | None:
            return cast(bytes | None, await client.get(self.key(key)))

        value = await self._attempt("get", call, None)
        CACHE_LOOKUPS.labels(result="miss" if value is None else "hit").inc()
        return value

    async def set(self, key: str, value: bytes | str, ttl_seconds: float | None = None) -> bool:
        px = int(ttl_seconds * 1000) if ttl_seconds is not None else None

        async def call(client: Redis) -> bool:
            return bool(await client.set(self.key(key), value, px=px))

        return await self._attempt("set", call, False)

    async def delete(self, key: str) -> bool:
        async def call(client: Redis) -> bool:
            return bool(await client.delete(self.key(key)))

        return await self._attempt("delete", call, False)

    async def exists(self, key: str) -> bool:
        async def call(client: Redis) -> bool:
            return bool(await client.exists(self.key(key)))

        return await self._attempt("exists", call, False)

    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int | None:
        """The new value, or None when Redis failed; `ttl_seconds` is set on first increment."""

        async def call(client: Redis) -> int | None:
            value = int(await client.incrby(self.key(key), amount))
            if ttl_seconds is not None and value == amount:
                await client.pexpire(self.key(key), int(ttl_seconds * 1000))
            return value

        return await self._attempt("incr", call, None)

    async def expire(self, key: str, ttl_seconds: float) -> bool:
        async def call(client: Redis) -> bool:
            return bool(await client.pexpire(self.key(key), int(ttl_seconds * 1000)))

        return await self._attempt("expire", call, False)

    async def put_field(self, key: str, field: str, value: bytes | str) -> bool:
        async def call(client: Redis) -> bool:
            await client.hset(self.key(key), field, value)
            return True

        return await self._attempt("hset", call, False)

    async def fields(self, key: str) -> dict[str, bytes]:
        """Every field of the hash `key` (empty when Redis failed)."""

        async def call(client: Redis) -> dict[str, bytes]:
            found = await client.hgetall(self.key(key))
            return {_text(name): _bytes(value) for name, value in found.items()}

        return await self._attempt("hgetall", call, {})

    async def drop_fields(self, key: str, *names: str) -> bool:
        async def call(client: Redis) -> bool:
            return bool(await client.hdel(self.key(key), *names))

        return await self._attempt("hdel", call, False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
