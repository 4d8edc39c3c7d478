"""A namespaced cache on Redis that degrades to a miss, logged and counted, when Redis fails."""

from __future__ import annotations

import logging
from typing import cast

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

CACHE_ERRORS = Counter(
    "switchyard_cache_errors_total",
    "Cache operations answered as a miss because Redis failed",
    ["operation"],
)


class Cache:
    def __init__(self, client: Redis | None, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, key: str) -> str:
        return f"{self.namespace}:cache:{key}"

    def _failed(self, operation: str, exc: Exception | None) -> None:
        CACHE_ERRORS.labels(operation=operation).inc()
        if exc is not None:
            logger.warning(
                "cache %s failed; treated as a miss", operation, extra={"error": str(exc)}
            )

    async def get(self, key: str) -> bytes | None:
        if self.client is None:
            return None
        try:
            value = cast(bytes | None, await self.client.get(self.key(key)))
        except RedisError as exc:
            self._failed("get", exc)
            return None
        return value

    async def set(self, key: str, value: bytes | str, ttl_seconds: float | None = None) -> bool:
        if self.client is None:
            return False
        try:
            px = int(ttl_seconds * 1000) if ttl_seconds is not None else None
            return bool(await self.client.set(self.key(key), value, px=px))
        except RedisError as exc:
            self._failed("set", exc)
            return False

    async def delete(self, key: str) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await self.client.delete(self.key(key)))
        except RedisError as exc:
            self._failed("delete", exc)
            return False

    async def exists(self, key: str) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await self.client.exists(self.key(key)))
        except RedisError as exc:
            self._failed("exists", exc)
            return False

    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int | None:
        """The new value, or None when Redis failed; `ttl_seconds` is set on first increment."""
        if self.client is None:
            return None
        try:
            value = int(await self.client.incrby(self.key(key), amount))
            if ttl_seconds is not None and value == amount:
                await self.client.pexpire(self.key(key), int(ttl_seconds * 1000))
        except RedisError as exc:
            self._failed("incr", exc)
            return None
        return value

    async def expire(self, key: str, ttl_seconds: float) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await self.client.pexpire(self.key(key), int(ttl_seconds * 1000)))
        except RedisError as exc:
            self._failed("expire", exc)
            return False
