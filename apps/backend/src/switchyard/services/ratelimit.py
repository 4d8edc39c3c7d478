"""Rate limits on Redis (the `limits` library), falling back to in-process counters."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client import Counter

from switchyard.errors import TooManyRequestsError
from switchyard.services.redis import RedisBreaker

logger = logging.getLogger(__name__)

REJECTIONS = Counter(
    "switchyard_rate_limit_rejections_total",
    "Requests refused by a rate limit, by limit name (auth, api, task_runs, ...)",
    ["limit"],
)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int


class RateLimiter:
    """Counts on Redis through the process's breaker: while Redis is skipped (it stayed silent
    or refused), limits are counted in the process, without waiting on Redis."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        enabled: bool = True,
        namespace: str = "switchyard",
        breaker: RedisBreaker | None = None,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.enabled = enabled
        self.namespace = namespace
        self.redis: Storage | None = None
        self.breaker = breaker or RedisBreaker(None)
        if redis_url is not None:
            uri = "async+" + redis_url if not redis_url.startswith("async+") else redis_url
            self.redis = RedisStorage(
                uri,
                implementation="redispy",
                wrap_exceptions=True,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
            )
        self.memory = MemoryStorage()

    async def _apply(
        self, storage: Storage, item: RateLimitItem, keys: tuple[str, ...], count: bool, cost: int
    ) -> Decision:
        limiter = FixedWindowRateLimiter(storage)
        # A refused hit counts in a fixed window; a refused batch of runs must not use up
        # the window it did not get, so a costly hit is tested first.
        allowed = await limiter.test(item, *keys, cost=cost) if cost > 1 or not count else True
        if allowed and count:
            allowed = await limiter.hit(item, *keys, cost=cost)
        if allowed:
            return Decision(True, 0)
        stats = await limiter.get_window_stats(item, *keys)
        return Decision(False, max(1, int(stats.reset_time - time.time()) + 1))

    async def hit(self, limit: str, *keys: str) -> Decision:
        """Count one request against `limit` (e.g. "5/minute") for the given keys; the first
        key names the limit (in metrics)."""
        return await self._decide(limit, keys, count=True)

    async def enforce(self, limit: str, *keys: str, count: bool = True, cost: int = 1) -> None:
        """Raise 429 (with Retry-After) when `limit` is used up for `keys`; counts this request
        (as `cost` hits: a bulk submission counts its runs) unless `count` is False."""
        decision = await self._decide(limit, keys, count=count, cost=cost)
        if not decision.allowed:
            raise TooManyRequestsError(
                f"Too many requests (limit {limit}); retry after {decision.retry_after} s.",
                decision.retry_after,
            )

    async def _decide(
        self, limit: str, keys: tuple[str, ...], *, count: bool, cost: int = 1
    ) -> Decision:
        if not self.enabled:
            return Decision(True, 0)
        item, namespaced = parse(limit), (self.namespace, *keys)
        decision: Decision | None = None
        if self.redis is not None and self.breaker.open_since is None:
            try:
                decision = await self._apply(self.redis, item, namespaced, count, cost)
            except Exception as exc:  # the storage's own errors vary by client; fall back
                self.breaker.failed(exc)
                logger.warning(
                    "rate limit storage failed; counting in process", extra={"error": repr(exc)}
                )
        if decision is None:
            decision = await self._apply(self.memory, item, namespaced, count, cost)
        if not decision.allowed:
            REJECTIONS.labels(limit=keys[0] if keys else "unnamed").inc()
        return decision
