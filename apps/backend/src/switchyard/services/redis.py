"""Redis: the async client (pool, timeouts, reconnect with backoff), its health probe, and
the circuit breaker every caller goes through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from switchyard.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

BREAKER_OPEN = Gauge(
    "switchyard_redis_breaker_open",
    "1 while Redis is skipped after failing (fallbacks in use), 0 otherwise",
    multiprocess_mode="max",
)
ANNOUNCER_CLOSE_SECONDS = 2.0  # a stopping process sends its queued events for this long
ANNOUNCEMENTS_DROPPED = Counter(
    "switchyard_redis_announcements_dropped_total",
    "Redis publishes no one waited for (run events) dropped: Redis failed them, or too many "
    "were pending",
)


def create_client(settings: Settings, url: str) -> Redis:
    """A client whose pool waits (up to the socket timeout) for a free connection when all
    REDIS_MAX_CONNECTIONS are in use: a worker's runs in flight share it, and a burst of them
    must queue for a connection, not fail."""
    timeout = settings.redis_socket_timeout_seconds
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        # Not on timeouts: a silent Redis would cost three timeouts per call, not one (and
        # the breaker skips it after the first).
        retry_on_error=[RedisConnectionError],
        decode_responses=False,
    )
    return Redis.from_pool(pool)  # the client owns its pool: aclose() closes it


async def probe(client: Redis) -> None:
    """Raise unless Redis answers PING."""
    await client.ping()


UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class RedisUnavailableError(RedisError):
    """Redis is not called while the breaker is open (it stayed silent or refused lately)."""


class RedisBreaker:
    """A circuit breaker in front of one Redis: after a call fails (refused, timed out), callers
    skip Redis at once and use their fallback (a cache miss, in-process limits, no event),
    while one background probe pings it every `retry_seconds`; when it answers, Redis is used
    again. So a silent Redis costs one timeout, not one per call."""

    def __init__(
        self, client: Redis | None, *, retry_seconds: float = 2.0, probe_timeout: float = 0.5
    ) -> None:
        self.client = client
        self.retry_seconds = retry_seconds
        self.probe_timeout = probe_timeout
        self.open_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    async def call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """`operation` on the client; RedisUnavailableError without a client or while open."""
        if self.client is None or self.open_since is not None:
            raise RedisUnavailableError("Redis is skipped while it does not answer")
        try:
            return await operation(self.client)
        except UNREACHABLE as exc:  # a refused command (WRONGTYPE ...) is no outage
            self.failed(exc)
            raise

    def failed(self, error: BaseException) -> None:
        """A call found Redis unusable: skip it until a probe gets an answer."""
        if self.open_since is not None:
            return
        self.open_since = time.monotonic()
        BREAKER_OPEN.set(1)
        logger.warning(
            "Redis does not answer; using fallbacks until it does", extra={"error": repr(error)}
        )
        try:
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_answered())
        except RuntimeError:  # no loop (a sync caller): the next async caller starts it
            self.open_since = None

    async def _probe_until_answered(self) -> None:
        assert self.client is not None
        while self.open_since is not None:
            await asyncio.sleep(self.retry_seconds)
            try:
                async with asyncio.timeout(self.probe_timeout):
                    await self.client.ping()
            except (*UNREACHABLE, RedisError):
                continue
            outage = time.monotonic() - self.open_since
            self.open_since = None
            BREAKER_OPEN.set(0)
            logger.info("Redis answers again", extra={"outage_seconds": round(outage, 1)})

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


class Announcer:
    """Redis PUBLISHes nobody waits for (run events for live followers): queued and sent in
    the order given, everything queued meanwhile in one pipeline, one pipeline at a time (so
    a run's `started` never overtakes its `succeeded`). One per event loop (`Services`).

    Best effort, as the events are (the ledger is the truth; followers re-read it when they
    connect): skipped while the breaker is open, dropped and counted when Redis fails them or
    when `most_pending` wait already."""

    def __init__(
        self, breaker: RedisBreaker, *, most_pending: int = 10_000, batch: int = 1_000
    ) -> None:
        self.breaker = breaker
        self.most_pending = most_pending
        self.batch = batch
        self._pending: deque[tuple[str, str]] = deque()
        self._sending: asyncio.Task[None] | None = None

    def publish(self, channel: str, message: str) -> None:
        """Queue one PUBLISH; on a running event loop."""
        if self.breaker.client is None or self.breaker.open_since is not None:
            return
        if len(self._pending) >= self.most_pending:
            ANNOUNCEMENTS_DROPPED.inc()
            return
        self._pending.append((channel, message))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(
                self._send(), name="redis-announcements"
            )

    async def _send(self) -> None:
        while self._pending:
            count = min(len(self._pending), self.batch)
            group = [self._pending.popleft() for _ in range(count)]

            async def publish_all(client: Redis, group: list[tuple[str, str]] = group) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    for channel, message in group:
                        pipe.publish(channel, message)
                    await pipe.execute()

            try:
                await self.breaker.call(publish_all)
            except RedisUnavailableError:
                ANNOUNCEMENTS_DROPPED.inc(count + len(self._pending))
                self._pending.clear()
                return
            except RedisError as exc:
                ANNOUNCEMENTS_DROPPED.inc(count)
                logger.warning(
                    "run events not published", extra={"events": count, "error": str(exc)}
                )

    async def close(self) -> None:
        """Send what is queued (a process stopping), for at most ANNOUNCER_CLOSE_SECONDS."""
        sending = self._sending
        if sending is not None and not sending.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sending), ANNOUNCER_CLOSE_SECONDS)
