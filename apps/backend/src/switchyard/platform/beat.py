"""Beat: publishes due runs of scheduled definitions; one leader at a time.

The leader holds a PostgreSQL advisory lock on a connection of its own, so a dead leader's
lock goes with its connection and a standby takes over on its next tick. Each due tick is
claimed in the database (`last_scheduled_for`, and a unique (definition, tick) run), so even
two leaders at once would publish it once. The leader also re-publishes accepted runs whose
publish never completed (the gateway died in between)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from switchyard.db.models import RunState, TaskDefinition, TaskRun, Tenant, TenantStatus
from switchyard.db.session import unit_of_work
from switchyard.platform import audit
from switchyard.platform.heartbeat import write_heartbeat
from switchyard.platform.metrics import BEAT_LAST_TICK, BEAT_LEADER, BEAT_PUBLISHED, TENANT_SPEND
from switchyard.platform.publisher import RunBroker, RunMessage
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.runs import ledger, retention
from switchyard.platform.schedules import from_stored, latest_due, next_due
from switchyard.platform.submission import OnRefusal, Submissions
from switchyard.services import quotas, usage
from switchyard.services.container import Services
from switchyard.services.outages import unreachable_dependency
from switchyard.services.usage import ANALYTICS

logger = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x5357_4254  # "SWBT"
OUTBOX_EVERY_SECONDS = 5.0
AUDIT_PURGE_EVERY_SECONDS = 3600.0


async def scheduled_definitions(session: AsyncSession, now: datetime) -> list[TaskDefinition]:
    """The enabled definitions with a schedule, of active tenants, due by `now` (one whose
    next tick is not worked out yet is due at the epoch). `ix_task_definitions_due` serves
    it: a tick reads the few definitions due, not every scheduled one."""
    statement = (
        select(TaskDefinition)
        .join(Tenant, Tenant.id == TaskDefinition.tenant_id)
        .where(
            # `enabled`, not `enabled IS true`: the index's predicate, as PostgreSQL proves it.
            TaskDefinition.enabled,
            TaskDefinition.schedule.is_not(None),
            TaskDefinition.next_due_at <= now,
            Tenant.status == TenantStatus.ACTIVE,  # a suspended tenant runs nothing
        )
    )
    return list((await session.scalars(statement)).all())


class Beat:
    def __init__(
        self,
        services: Services,
        publisher: RunBroker,
        registry: TaskRegistry,
        heartbeat: Path,
        erase_tenants_due: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        """`erase_tenants_due`: erases the tenants whose deletion is due (the tenants domain's,
        given by the role), run in the background every TENANT_DELETION_EVERY_SECONDS."""
        self.services = services
        self.engine = services.database_engine
        self.sessions = services.database_sessions
        self.publisher = publisher
        self.registry = registry
        self.heartbeat = heartbeat
        self.settings = services.settings
        self.lock_connection: AsyncConnection | None = None
        self.leader_since: float | None = None
        self.last_outbox = 0.0
        self.last_audit_purge: float | None = None  # the first tick as leader purges
        self.last_usage_shipped = -float("inf")  # the first tick as leader copies usage
        self.last_retention: float | None = None  # ...and starts a retention pass
        self.retention: asyncio.Task[retention.Expired | None] | None = None
        # Tenants' deletions due (tenants.deletion), erased in the background like retention.
        self.last_deletions: float | None = None
        self.deletions: asyncio.Task[int] | None = None
        self.erase_tenants_due = erase_tenants_due
        # Fair share's backstop sweep: the role's admission (roles.beat gives it).
        self.dispatcher = services.admission
        self.marks = ledger.PublishedMarks(self.engine)
        self.submissions = Submissions.create(
            self.settings, self.engine, publisher, self.marks, services.usage
        )
        self.failed_ticks = 0  # in a row; the healthcheck reads it from the heartbeat

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:
                    self.failed_ticks += 1
                    logger.exception("beat tick failed", extra={"failed_ticks": self.failed_ticks})
                    await self._resign()
                else:
                    self.failed_ticks = 0
                    BEAT_LAST_TICK.set(time.time())
                BEAT_LEADER.set(1 if self.leader_since is not None else 0)
                self._write_heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.beat_tick_seconds)
        finally:
            await self.submissions.close()
            await self.marks.close()
            await self._resign()
            BEAT_LEADER.set(0)
            self.heartbeat.unlink(missing_ok=True)

    async def tick(self) -> None:
        """Both steps run, whatever the other did; the tick fails if either failed."""
        if not await self._lead():
            return
        now = datetime.now(UTC)
        failures: list[Exception] = []
        try:
            await self.publish_due(now)
        except Exception as exc:
            failures.append(exc)
        try:
            # Fair share's backstop: slots freed without an admission after them (a worker
            # killed in between, a dead letter, a raised cap) are given out round robin.
            if self.dispatcher is not None:
                await self.dispatcher.sweep()
        except Exception as exc:
            failures.append(exc)
        if time.monotonic() - self.last_outbox >= OUTBOX_EVERY_SECONDS:
            self.last_outbox = time.monotonic()
            try:
                await self.republish_stale(now)
            except Exception as exc:
                failures.append(exc)
        if (
            self.last_audit_purge is None
            or time.monotonic() - self.last_audit_purge >= AUDIT_PURGE_EVERY_SECONDS
        ):
            self.last_audit_purge = time.monotonic()
            try:
                await self.purge_audit_events()
            except Exception as exc:
                failures.append(exc)
        if time.monotonic() - self.last_usage_shipped >= self.settings.usage_ship_seconds:
            self.last_usage_shipped = time.monotonic()
            failures.extend(await self._usage_step(now))
        self._start_retention()
        self._start_deletions()
        if failures:
            raise failures[0]

    async def _usage_step(self, now: datetime) -> list[Exception]:
        """The spend metric, then the copy to the analytics bind (if any); what failed."""
        failures: list[Exception] = []
        try:
            await spend_metric(self.engine, now, self.settings.tenant_spend_top)
        except Exception as exc:
            failures.append(exc)
        if ANALYTICS in self.services.binds:
            try:
                copied = await usage.ship(self.engine, self.services.binds[ANALYTICS])
                if copied:
                    logger.info("usage copied to the analytics bind", extra={"rows": copied})
            except Exception as exc:
                failures.append(exc)
        return failures

    def _start_retention(self) -> None:
        """A retention pass in the background (it may take minutes on a large backlog, and
        the tick's schedules must not wait for it): every RETENTION_EVERY_SECONDS, one at a
        time, while this beat leads."""
        if self.retention is not None and not self.retention.done():
            return
        every = self.settings.retention_every_seconds
        if self.last_retention is not None and time.monotonic() - self.last_retention < every:
            return
        self.last_retention = time.monotonic()
        self.retention = asyncio.create_task(self.expire(), name="retention")

    def _start_deletions(self) -> None:
        """Erase the tenants whose deletion is due, in the background, one pass at a time,
        every TENANT_DELETION_EVERY_SECONDS while this beat leads."""
        if self.erase_tenants_due is None:
            return
        if self.deletions is not None and not self.deletions.done():
            return
        every = self.settings.tenant_deletion_every_seconds
        if self.last_deletions is not None and time.monotonic() - self.last_deletions < every:
            return
        self.last_deletions = time.monotonic()
        self.deletions = asyncio.create_task(self.erase_tenants(), name="tenant-deletions")

    async def erase_tenants(self) -> int:
        """One pass over the deletions due; a failure is logged (the next pass goes on from
        where this one stopped: every step is safe to repeat)."""
        assert self.erase_tenants_due is not None
        try:
            return await self.erase_tenants_due()
        except Exception:
            logger.exception("tenant deletion pass failed")
            return 0

    async def expire(self) -> retention.Expired | None:
        """One retention pass; a failure is logged (the next pass starts over)."""
        try:
            return await retention.expire(self.engine, self.settings)
        except Exception:
            logger.exception("retention pass failed")
            return None

    async def purge_audit_events(self) -> int:
        """Audit events older than AUDIT_RETENTION_DAYS go (hourly, in batches)."""
        deleted = await audit.purge(self.sessions, self.settings.audit_retention_days)
        if deleted:
            logger.info("audit events purged", extra={"count": deleted})
        return deleted

    async def _lead(self) -> bool:
        if self.lock_connection is not None:
            await self.lock_connection.execute(text("SELECT 1"))
            return True
        connection = await self.engine.connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            won = await connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK_KEY}
            )
        except Exception:
            await connection.close()
            raise
        if not won:
            await connection.close()
            return False
        self.lock_connection = connection
        self.leader_since = time.time()
        logger.info("beat leads")
        return True

    async def _resign(self) -> None:
        connection, self.lock_connection = self.lock_connection, None
        self.leader_since = None
        for pass_ in (self.retention, self.deletions):
            if pass_ is not None and not pass_.done():
                pass_.cancel()  # its batch rolls back; the next leader's pass starts over
                await asyncio.gather(pass_, return_exceptions=True)
        self.retention = self.deletions = None
        if connection is not None:
            try:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK_KEY}
                )
            except Exception:
                await connection.invalidate()
            await connection.close()

    def _write_heartbeat(self) -> None:
        write_heartbeat(
            self.heartbeat,
            {
                "leader": self.leader_since is not None,
                "leader_since": self.leader_since,
                "failed_ticks": self.failed_ticks,
            },
        )

    async def publish_due(self, now: datetime) -> int:
        """Create and publish one run per definition whose latest tick is not yet claimed."""
        async with self.sessions() as session:
            definitions = await scheduled_definitions(session, now)
        published = 0
        for definition in definitions:
            try:
                published += await self._publish_if_due(definition, now)
            except Exception as exc:
                if unreachable_dependency(exc) is not None:
                    raise  # an outage fails the tick; it is not this definition's fault
                # One tenant's broken definition never stops another tenant's schedules.
                logger.exception(
                    "scheduled definition skipped",
                    extra={"definition": definition.name, "tenant_id": str(definition.tenant_id)},
                )
        return published

    async def _publish_if_due(self, definition: TaskDefinition, now: datetime) -> int:
        schedule = from_stored(definition.schedule)  # a broken one: this definition is skipped
        anchor = definition.last_scheduled_for or definition.created_at
        due = latest_due(schedule, anchor, now)
        following = next_due(schedule, anchor, now)
        if due is None:
            await self._plan(definition, following)
            return 0
        if not await self._claim_tick(definition, due, following):
            return 0
        BEAT_PUBLISHED.labels(kind="scheduled").inc()
        return 1

    async def _plan(self, definition: TaskDefinition, following: datetime) -> None:
        """Note the definition's next tick, unless its schedule changed since it was read
        (the change made it due at once: the next tick works it out again)."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(TaskDefinition)
                .where(
                    TaskDefinition.id == definition.id,
                    TaskDefinition.schedule == definition.schedule,
                )
                .values(next_due_at=following)
            )

    async def _claim_tick(
        self, definition: TaskDefinition, due: datetime, following: datetime
    ) -> bool:
        spec = self.registry.get(definition.task)
        if spec is None or spec.access == "internal":
            logger.error("scheduled task is not registered", extra={"task": definition.task})
            return False
        try:
            spec.validate(definition.payload, self.settings.environment)
        except ValidationError:
            logger.error("scheduled payload no longer valid", extra={"definition": definition.name})
            return False
        async with unit_of_work(self.sessions()) as session:
            claimed = await session.scalar(
                update(TaskDefinition)
                .where(
                    TaskDefinition.id == definition.id,
                    TaskDefinition.enabled.is_(True),
                    TaskDefinition.schedule == definition.schedule,
                    or_(
                        TaskDefinition.last_scheduled_for.is_(None),
                        TaskDefinition.last_scheduled_for < due,
                    ),
                )
                .values(last_scheduled_for=due, next_due_at=following)
                .returning(TaskDefinition.id)
            )
            if claimed is None:
                return False
            run = TaskRun(
                id=uuid.uuid4(),
                tenant_id=definition.tenant_id,
                task=spec.name,
                definition_id=definition.id,
                queue=definition.queue or spec.queue,
                payload=definition.payload,
                state=RunState.QUEUED,
                attempts=0,
                scheduled_for=due,
                submitted_by="beat",
            )
            # The tick is claimed with its run; a broker that refuses leaves it to the outbox.
            await self.submissions.submit([run], on_refusal=OnRefusal.KEEP, within=session)
        return True

    async def republish_stale(self, now: datetime) -> int:
        older_than = now - timedelta(seconds=self.settings.task_republish_after_seconds)
        async with self.sessions.begin() as session:
            stale = await ledger.unpublished(session, older_than)
            if stale:
                logger.warning("re-publishing accepted runs", extra={"count": len(stale)})
                await self._publish(stale, session=session)
                BEAT_PUBLISHED.labels(kind="republished").inc(len(stale))
        return len(stale)

    async def _publish(self, runs: list[TaskRun], session: AsyncSession) -> None:
        """Publish runs again in one burst; what the broker refused is left for the next pass."""
        messages = [RunMessage.of(run, run.eta) for run in runs]
        confirmed = await self.publisher.publish_many(messages)
        done = [run.id for run, ok in zip(runs, confirmed, strict=True) if ok]
        if done:
            await ledger.mark_published(session, done)


async def spend_metric(engine: AsyncEngine, now: datetime, top: int) -> None:
    """`switchyard_tenant_spend`: this month's top spenders (by slug) and the rest together
    ("other"), a bounded set of labels."""
    start, _ = quotas.period(quotas.Window.MONTH, now)
    assert start is not None
    async with engine.connect() as connection:
        spenders, rest = await usage.top_spenders(connection, start, now + timedelta(hours=1), top)
        slugs = dict(
            (
                await connection.execute(
                    select(Tenant.id, Tenant.slug).where(
                        Tenant.id.in_([spender.tenant_id for spender in spenders])
                    )
                )
            ).all()
        )
    TENANT_SPEND.clear()
    for spender in [*spenders, rest]:
        label = slugs.get(spender.tenant_id, "other") if spender.tenant_id else "other"
        for what in ("llm_tokens", "runs", "run_seconds", "searches"):
            TENANT_SPEND.labels(label, what).set(getattr(spender, what))
