"""The services container: every client a role needs, built in its lifecycle and closed after."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from switchyard import __version__
from switchyard.services import postgres, redis
from switchyard.services.cache import Cache
from switchyard.services.health import HealthCheck, HealthMonitor
from switchyard.settings import Settings


@dataclass
class Services:
    settings: Settings
    service_type: str
    database: AsyncEngine | None
    sessions: async_sessionmaker[AsyncSession] | None
    redis: Redis | None = None
    cache: Cache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = Cache(self.redis, self.settings.cache_namespace)

    @classmethod
    def create(cls, settings: Settings, service_type: str) -> Services:
        """Build the clients; none of them connects until first used."""
        url = settings.database
        engine = (
            postgres.create_engine(settings, url, f"switchyard-{service_type}")
            if url is not None
            else None
        )
        sessions = postgres.create_session_factory(engine) if engine is not None else None
        redis_client = (
            redis.create_client(settings, settings.redis_url.get_secret_value())
            if settings.redis_url is not None
            else None
        )
        return cls(settings, service_type, engine, sessions, redis_client)

    async def close(self) -> None:
        if self.database is not None:
            await self.database.dispose()
        if self.redis is not None:
            await self.redis.aclose()

    def health_checks(self) -> list[HealthCheck]:
        return [
            HealthCheck(
                name="postgres",
                critical=True,
                probe=partial(postgres.probe, self.database) if self.database else None,
            ),
            HealthCheck(
                name="redis",
                critical=True,
                probe=partial(redis.probe, self.redis) if self.redis else None,
            ),
        ]

    def health_monitor(self, checks: list[HealthCheck] | None = None) -> HealthMonitor:
        return HealthMonitor(
            self.health_checks() if checks is None else checks,
            service_type=self.service_type,
            version=__version__,
            timeout=self.settings.health_probe_timeout_seconds,
            cache_seconds=self.settings.health_cache_seconds,
        )

    def enabled(self) -> dict[str, bool]:
        """Which backing services this configuration turns on."""
        settings = self.settings
        return {
            "postgres": self.database is not None,
            "redis": self.redis is not None,
            "broker": settings.celery_broker_url is not None,
            "neo4j": settings.neo4j_uri is not None,
            "objects": settings.minio_endpoint is not None,
            "vectors": settings.chroma_host is not None,
            "llm": settings.zhipuai_api_key is not None,
        }
