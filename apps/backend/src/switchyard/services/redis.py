"""Redis: the async client (pool, timeouts, reconnect with backoff) and its health probe."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from switchyard.settings import Settings


def create_client(settings: Settings, url: str) -> Redis:
    timeout = settings.redis_socket_timeout_seconds
    return Redis.from_url(
        url,
        max_connections=settings.redis_max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
    )


async def probe(client: Redis) -> None:
    """Raise unless Redis answers PING."""
    await client.ping()
