"""The gateway role's composition root: what a gateway process builds once, in its lifespan,
and what its requests are handed (`platform.dependencies`). One typed object: requests read
its fields, never untyped attributes of the app."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from switchyard.platform.broker import Broker, with_broker_check
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.runs import admission, ledger
from switchyard.platform.submission import Submissions
from switchyard.platform.workflows import engine as workflows
from switchyard.services.container import Services
from switchyard.services.health import HealthMonitor
from switchyard.services.ratelimit import RateLimiter
from switchyard.settings import Settings


@dataclass(frozen=True, slots=True)
class Gateway:
    services: Services
    broker: Broker | None
    registry: TaskRegistry
    rate_limiter: RateLimiter
    health: HealthMonitor
    # With a database: `published_at` marks in batches and the one way runs enter
    # (platform.submission; without a broker, only the runs the outbox may publish later);
    # with a broker too, the dispatcher of waiting runs (fair share).
    published_marks: ledger.PublishedMarks | None
    submissions: Submissions | None
    dispatcher: admission.Dispatcher | None

    @classmethod
    def create(cls, settings: Settings, service_type: str, registry: TaskRegistry) -> Gateway:
        broker = Broker.create(settings)
        services = Services.create(
            settings,
            service_type,
            admission=admission.dispatcher_for(broker.publisher, settings) if broker else None,
        )
        dispatcher = services.admission
        assert dispatcher is None or isinstance(dispatcher, admission.Dispatcher)
        marks = submissions = None
        if services.database is not None:
            marks = ledger.PublishedMarks(services.database)
            submissions = Submissions.create(
                settings,
                services.database,
                broker.publisher if broker else None,
                marks,
                services.usage,
            )
        if services.database is not None:  # runs it ends (a cancel) advance their workflows
            services.workflow_steps = workflows.Steps(services, registry)
        checks = with_broker_check(services, broker)
        return cls(
            services=services,
            broker=broker,
            registry=registry,
            rate_limiter=RateLimiter(
                settings.redis_url.get_secret_value() if settings.redis_url else None,
                enabled=settings.rate_limits_enabled,
                namespace=settings.cache_namespace,
                breaker=services.redis_breaker,
                timeout_seconds=settings.redis_socket_timeout_seconds,
            ),
            health=services.health_monitor(checks),
            published_marks=marks,
            submissions=submissions,
            dispatcher=dispatcher,
        )

    async def close(self) -> None:
        """Accept what is pending, write the pending marks, close every client."""
        if self.submissions is not None:
            await self.submissions.close()
        if self.published_marks is not None:
            await self.published_marks.close()
        await self.services.close()
        if self.broker is not None:
            self.broker.close()


def gateway_of(request: Request) -> Gateway:
    """The gateway the request's app built in its lifespan."""
    gateway = getattr(request.app.state, "gateway", None)
    if not isinstance(gateway, Gateway):
        raise RuntimeError("the app's lifespan has not run: no gateway to serve the request")
    return gateway
