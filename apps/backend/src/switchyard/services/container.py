"""The services container: every client a role needs, built in its lifecycle and closed after."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from switchyard import __version__
from switchyard.db import engine as postgres
from switchyard.db.binds import Bind, BindUnavailableError, create_binds
from switchyard.errors import ServiceUnavailableError
from switchyard.services import host, redis
from switchyard.services.cache import Cache
from switchyard.services.cpu import CpuPool
from switchyard.services.email import (
    DevelopmentMailbox,
    EmailNotConfiguredError,
    Mailer,
    create_mailer,
)
from switchyard.services.embeddings import Embedder, LocalEmbedder, create_embedder
from switchyard.services.health import HealthCheck, HealthMonitor
from switchyard.services.llm import LLMDisabledError, ZhipuClient, create_llm
from switchyard.services.neo4j import Neo4j, create_neo4j
from switchyard.services.objects import ObjectStore, create_object_store
from switchyard.services.quotas import LlmBudget, Quotas
from switchyard.services.redis import Announcer, RedisBreaker
from switchyard.services.usage import UsageRecorder
from switchyard.services.vectors import VectorStore
from switchyard.settings import Settings

logger = logging.getLogger(__name__)


class Admission(Protocol):
    """What a role's services offer to free a slot of a tenant's fair share: admit and publish
    the tenant's oldest waiting runs (`platform.runs.admission.Dispatcher`, installed by a role with
    a broker)."""

    @property
    def enabled(self) -> bool: ...

    async def try_release(self, tenant_id: uuid.UUID) -> None: ...

    async def publish(self, runs: Sequence[Any]) -> int: ...

    async def sweep(self) -> int: ...


@dataclass
class Services:
    settings: Settings
    service_type: str
    database: AsyncEngine | None
    sessions: async_sessionmaker[AsyncSession] | None
    redis: Redis | None = None
    redis_breaker: RedisBreaker = field(init=False)
    announcer: Announcer = field(init=False)
    cache: Cache = field(init=False)
    objects: ObjectStore = field(init=False)
    vectors: VectorStore = field(init=False)
    neo4j: Neo4j | None = field(init=False)
    llm: ZhipuClient | None = field(init=False)
    embedder: Embedder = field(init=False)
    # What tenants use, recorded where it happens (services.usage).
    usage: UsageRecorder = field(init=False)
    # Plans' quotas: checks before the work, soft-limit warnings (services.quotas).
    quotas: Quotas = field(init=False)
    cpu: CpuPool = field(init=False)
    binds: dict[str, Bind] = field(init=False)
    # None: production without SMTP_HOST (account email is refused).
    mailer: Mailer | None = field(init=False)
    # Development without SMTP_HOST: the email written instead of sent (None otherwise).
    mailbox: DevelopmentMailbox | None = field(init=False)
    # Admits and publishes waiting runs when a slot of a tenant's share frees (fair share):
    # given by a role with a broker and a database (`create(..., admission=...)`).
    admission: Admission | None = None
    # A worker's hook that advances workflows with their steps' outcomes
    # (platform.workflows.engine.Steps, installed with the worker's tasks).
    workflow_steps: Any = None

    def __post_init__(self) -> None:
        settings = self.settings
        self.redis_breaker = redis.RedisBreaker(self.redis)
        self.announcer = redis.Announcer(self.redis_breaker)
        self.cache = Cache(self.redis, settings.cache_namespace, self.redis_breaker)
        self.objects = create_object_store(settings)
        self.neo4j = create_neo4j(settings)
        metering = settings.usage_metering
        self.usage = UsageRecorder(self.database if metering else None)
        self.quotas = Quotas(self.database, self.redis, settings.cache_namespace)
        budget = LlmBudget(self.database, self.quotas) if metering else None
        self.llm = create_llm(settings, budget)
        self.cpu = CpuPool(settings.worker_cpu_processes, settings.worker_cpu_memory_mb)
        self.embedder = create_embedder(settings, self.llm, self.cpu, self.usage)
        self.vectors = VectorStore.from_settings(settings, space=self.embedder.name)
        self.binds = create_binds(settings, f"switchyard-{self.service_type}")
        self.mailbox = (
            DevelopmentMailbox(self.redis_breaker, settings.cache_namespace)
            if settings.email_logged
            else None
        )
        self.mailer = create_mailer(settings, self.mailbox)

    @classmethod
    def create(
        cls,
        settings: Settings,
        service_type: str,
        *,
        admission: Callable[[AsyncEngine], Admission] | None = None,
    ) -> Services:
        """Build the clients; none of them connects until first used. `admission` builds the
        role's admission on the database engine (`platform.runs.admission.dispatcher_for`)."""
        url = settings.database
        engine = (
            postgres.create_engine(
                settings, url, f"switchyard-{service_type}", keep_overflow=service_type == "worker"
            )
            if url is not None
            else None
        )
        sessions = postgres.create_session_factory(engine) if engine is not None else None
        redis_client = (
            redis.create_client(settings, settings.redis_url.get_secret_value())
            if settings.redis_url is not None
            else None
        )
        given = admission(engine) if admission is not None and engine is not None else None
        return cls(settings, service_type, engine, sessions, redis_client, admission=given)

    async def close(self) -> None:
        await self.usage.close()  # what is counted and not yet written, first
        if self.database is not None:
            await self.database.dispose()
        await self.announcer.close()
        await self.redis_breaker.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.objects.close()
        await self.vectors.close()
        if self.neo4j is not None:
            await self.neo4j.close()
        if self.llm is not None:
            await self.llm.close()
        for bind in self.binds.values():
            await bind.engine.dispose()
        await asyncio.to_thread(self.cpu.close)

    async def warm_up(self) -> None:
        """Pay the slow first-use costs (the vector client's import, the local embedding
        model) in the background after start, not in the first search."""
        try:
            await self.vectors.client()
            if isinstance(self.embedder, LocalEmbedder):
                await self.embedder.warm_up()
        except Exception as exc:  # the first real use reports the problem properly
            logger.warning("warm-up failed", extra={"error": repr(exc)})

    @property
    def database_sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory of the role's database; 503 naming DATABASE_URL without one."""
        if self.sessions is None:
            raise ServiceUnavailableError("No database is configured (DATABASE_URL).")
        return self.sessions

    @property
    def database_engine(self) -> AsyncEngine:
        """The engine of the role's database; 503 naming DATABASE_URL without one."""
        if self.database is None:
            raise ServiceUnavailableError("No database is configured (DATABASE_URL).")
        return self.database

    def require_mailer(self) -> Mailer:
        if self.mailer is None:
            raise EmailNotConfiguredError
        return self.mailer

    def require_llm(self) -> ZhipuClient:
        if self.llm is None:
            raise LLMDisabledError
        return self.llm

    def bind(self, name: str) -> Bind:
        found = self.binds.get(name)
        if found is None:
            raise BindUnavailableError(name)
        return found

    def health_check(self, name: str, probe: Callable[[], Awaitable[None]] | None) -> HealthCheck:
        """A check that is critical when HEALTH_CRITICAL names it."""
        return HealthCheck(name, name in self.settings.health_critical, probe)

    def health_checks(self) -> list[HealthCheck]:
        """Every backing service; a check without a probe reports `disabled`."""
        checks = [
            self.health_check(
                "postgres", partial(postgres.probe, self.database) if self.database else None
            ),
            self.health_check("redis", partial(redis.probe, self.redis) if self.redis else None),
            self.health_check("minio", self.objects.probe),
            self.health_check("chroma", self.vectors.probe),
            self.health_check("neo4j", self.neo4j.probe if self.neo4j else None),
            self.health_check("zhipu", self.llm.probe if self.llm else None),
            self.health_check(
                "disk",
                partial(
                    host.probe_disk,
                    self.settings.var_dir,
                    self.settings.health_disk_min_free_percent,
                ),
            ),
            self.health_check(
                "memory", partial(host.probe_memory, self.settings.health_memory_max_percent)
            ),
        ]
        checks.extend(
            self.health_check(f"database:{name}", bind.probe) for name, bind in self.binds.items()
        )
        return checks

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
            "objects": True,
            "vectors": True,
            "llm": settings.zhipuai_api_key is not None,
            **{f"database:{name}": True for name in self.binds},
        }
