"""Fair share: a tenant's runs in flight are capped, and the rest wait in the ledger.

A run is *admitted* (``admitted_at`` set) when it takes one of its tenant's slots; only an
admitted run is published to a work queue. A tenant holds at most its cap of admitted runs
that are not final (``queued`` in the broker, ``started`` or ``retrying``), so the broker
never holds more than that many of one tenant's messages, and another tenant's run never
queues behind a long backlog: it is admitted and published at once, into a queue a few of
each tenant's messages long. A run over the cap is recorded ``queued`` with no
``admitted_at`` (``waiting_for_capacity``), never published, never requeued.

A slot frees when a run becomes final; whoever made it final (the worker, a cancel, the dead
letter archive) admits that tenant's next waiting runs, oldest first, and publishes them. The
beat leader (every tick) and every worker process (every 2 s) sweep as a backstop (a worker
killed between the two, a raised cap), admitting round robin across tenants. They publish
before their transaction commits, so a process killed in between leaves no run admitted and
unpublished. Each admission
holds a transaction-scoped advisory lock on its tenant, so two processes admitting for one
tenant at once never pass its cap.

Delayed runs wait in the broker's delay queues unadmitted; when one comes due, the worker
admits it then, or, when its tenant is at the cap, parks it (``queued``, unpublished) for
the next slot. See docs/operations.md, "Fair share".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.db.engine import once_more_if_dropped
from switchyard.db.models import TaskRun
from switchyard.platform import ledger
from switchyard.platform.metrics import RUNS_ADMITTED
from switchyard.platform.publisher import BrokerUnavailableError, RunPublisher

if TYPE_CHECKING:
    from switchyard.services.container import Services

logger = logging.getLogger(__name__)

# The advisory lock namespace of admissions (the two-key form; beat's leader lock is a
# one-key lock, which PostgreSQL keeps apart): ("SY", hashtext(tenant id)).
LOCK_NAMESPACE: Final = 0x5359
WAITING_FOR_CAPACITY: Final = "waiting_for_capacity"
IN_FLIGHT_STATES: Final = ("queued", "started", "retrying")
SWEEP_TENANTS: Final = 500
_RUNS = cast(Table, TaskRun.__table__)

_LOCK = text("SELECT pg_advisory_xact_lock(:namespace, hashtext(CAST(:tenant AS text)))")
# The tenant's own cap if the superuser set one, else the setting; 0 means no cap.
_CAP = "COALESCE((SELECT max_runs_in_flight FROM tenants WHERE id = :tenant), :default_cap)"
_HOLDING = (
    "tenant_id = :tenant AND admitted_at IS NOT NULL AND state IN ('queued', 'started', 'retrying')"
)
_IN_FLIGHT = f"SELECT count(*) FROM task_runs WHERE {_HOLDING}"  # noqa: S608 - constants
# Counted only up to the cap (`n`): what admission needs, at a cost bounded by the cap, not by
# how many runs a tenant has in flight (more than its cap only after its cap was lowered).
_IN_FLIGHT_UP_TO_CAP = (
    f"SELECT count(*) FROM (SELECT 1 FROM task_runs WHERE {_HOLDING} LIMIT n) AS held"  # noqa: S608
)
# LIMIT NULL is no limit: an uncapped tenant's waiting runs are all admitted.
_ADMIT = text(
    f"""
    WITH cap AS (SELECT {_CAP} AS n)
    UPDATE task_runs SET admitted_at = now()
    WHERE id IN (
        SELECT id FROM task_runs
        WHERE tenant_id = :tenant AND admitted_at IS NULL AND state = 'queued'
        ORDER BY created_at
        LIMIT (SELECT CASE WHEN n = 0 THEN NULL ELSE greatest(0, n - ({_IN_FLIGHT_UP_TO_CAP}))
                      END
               FROM cap)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, task, queue, tenant_id, request_id, created_at
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)
_ADMIT_DUE = text(
    f"""
    UPDATE task_runs SET admitted_at = now()
    WHERE id = :run_id AND admitted_at IS NULL AND state IN ('queued', 'scheduled', 'retrying')
      AND (SELECT CASE WHEN n = 0 THEN true ELSE ({_IN_FLIGHT_UP_TO_CAP}) < n END
           FROM (SELECT {_CAP} AS n) AS cap)
    RETURNING id
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)
_PARK = text(
    """
    UPDATE task_runs SET state = 'queued', eta = NULL, published_at = NULL
    WHERE id = :run_id AND admitted_at IS NULL AND state IN ('queued', 'scheduled', 'retrying')
    RETURNING id
    """
)
_ADMITTED = text("SELECT admitted_at IS NOT NULL FROM task_runs WHERE id = :run_id")
_HAS_WAITING = text(
    "SELECT EXISTS (SELECT 1 FROM task_runs WHERE tenant_id = :tenant "
    "AND admitted_at IS NULL AND state = 'queued')"
)
_WAITING_TENANTS = text(
    "SELECT DISTINCT tenant_id FROM task_runs WHERE admitted_at IS NULL AND state = 'queued' "
    "LIMIT :limit"
)
_COUNTS = text(
    f"""
    SELECT
      (SELECT count(*) FROM task_runs WHERE tenant_id = :tenant AND admitted_at IS NULL
         AND state = 'queued') AS waiting,
      ({_IN_FLIGHT}) AS in_flight,
      (SELECT count(*) FROM task_runs WHERE tenant_id = :tenant AND admitted_at IS NOT NULL
         AND state = 'started') AS started,
      {_CAP} AS cap
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A run that just got a slot: what its publish needs."""

    id: uuid.UUID
    task: str
    queue: str
    tenant_id: uuid.UUID
    request_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Share:
    """A tenant's share as `GET /tasks/` shows it."""

    limit: int | None
    in_flight: int
    started: int
    waiting_for_capacity: int


async def lock(connection: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Serialise admissions of one tenant until the transaction ends."""
    await connection.execute(_LOCK, {"namespace": LOCK_NAMESPACE, "tenant": str(tenant_id)})


async def admit(
    connection: AsyncConnection, tenant_id: uuid.UUID, default_cap: int
) -> list[Admitted]:
    """Give the tenant's oldest waiting runs the slots it has free. In a transaction that
    holds the tenant's lock (`lock`); the caller publishes what it returns."""
    rows = await connection.execute(_ADMIT, {"tenant": tenant_id, "default_cap": default_cap})
    admitted = [Admitted(**row._mapping) for row in rows]
    admitted.sort(key=lambda run: run.created_at)
    return admitted


async def record(connection: AsyncConnection, run: TaskRun, default_cap: int) -> list[Admitted]:
    """Store a new `queued` run (a transient TaskRun, unadmitted) and admit what its tenant
    has room for, in the caller's transaction under the tenant's lock (held until it ends):
    the new run itself when no older run of the tenant waits and a slot is free.
    IntegrityError as for any insert."""
    await lock(connection, run.tenant_id)
    await connection.execute(insert(_RUNS), ledger.insert_values(run))
    return await admit(connection, run.tenant_id, default_cap)


async def store(
    connection: AsyncConnection, runs: Sequence[ledger.Stored], default_cap: int
) -> tuple[set[uuid.UUID], list[Admitted]]:
    """Store new runs of any tenants in one statement (ledger.record_many: the ids stored)
    and, with fair share on, admit what each of their tenants has room for, oldest first,
    under the tenants' locks (taken in id order: two groups never wait on each other in a
    cycle). With fair share off (`default_cap` 0) the runs come admitted already."""
    if default_cap == 0:
        return await ledger.record_many(connection, runs), []
    tenants = sorted({run.tenant_id for run in runs})
    for tenant_id in tenants:
        await lock(connection, tenant_id)
    stored = await ledger.record_many(connection, runs)
    admitted: list[Admitted] = []
    for tenant_id in tenants:
        admitted += await admit(connection, tenant_id, default_cap)
    return stored, admitted


async def admit_due(
    connection: AsyncConnection, run_id: uuid.UUID, tenant_id: uuid.UUID, default_cap: int
) -> bool:
    """A run delivered unadmitted (a delayed run come due, or a message of an admission that
    rolled back): admitted if its tenant has a slot free, else parked as waiting. True when
    it is admitted (by this call or by the admission whose message this is)."""
    await lock(connection, tenant_id)
    values = {"run_id": run_id, "tenant": tenant_id, "default_cap": default_cap}
    if (await connection.execute(_ADMIT_DUE, values)).first() is not None:
        return True
    # Admitted meanwhile: the message came from a dispatcher's transaction that published
    # before its commit, and the commit came before this lock.
    if await connection.scalar(_ADMITTED, {"run_id": run_id}):
        return True
    await connection.execute(_PARK, {"run_id": run_id})
    return False


async def share(connection: AsyncConnection, tenant_id: uuid.UUID, default_cap: int) -> Share:
    row = (
        await connection.execute(_COUNTS, {"tenant": tenant_id, "default_cap": default_cap})
    ).one()
    cap = int(row.cap)
    return Share(
        limit=cap or None,
        in_flight=int(row.in_flight),
        started=int(row.started),
        waiting_for_capacity=int(row.waiting),
    )


class Dispatcher:
    """Admits waiting runs of a tenant whose slot freed and publishes them: one per process,
    on its loop (the worker's, the gateway's, beat's)."""

    def __init__(self, engine: AsyncEngine, publisher: RunPublisher, default_cap: int) -> None:
        self.engine = engine
        self.publisher = publisher
        self.default_cap = default_cap
        self._active: set[uuid.UUID] = set()  # tenants being admitted for, now
        self._again: set[uuid.UUID] = set()  # ...and slots of theirs freed meanwhile

    @property
    def enabled(self) -> bool:
        return self.default_cap > 0

    async def released(self, tenant_id: uuid.UUID) -> int:
        """A run of the tenant became final: admit and publish its next waiting runs.

        Coalesced per tenant: while one admission of the tenant runs in this process, the
        slots freed meanwhile are given out by one more pass of it, in one transaction, not
        by one each (a busy tenant frees a slot per finished run)."""
        if not self.enabled:
            return 0
        if tenant_id in self._active:
            self._again.add(tenant_id)
            return 0
        self._active.add(tenant_id)
        admitted = 0
        try:
            while True:
                self._again.discard(tenant_id)
                if await once_more_if_dropped(self.engine, _has_waiting(tenant_id)):
                    admitted += await self.dispatch(tenant_id)
                if tenant_id not in self._again:
                    return admitted
        finally:
            self._active.discard(tenant_id)
            self._again.discard(tenant_id)

    async def try_release(self, tenant_id: uuid.UUID) -> None:
        """`released`, for callers whose own work is done (a run recorded final, a cancel
        committed): a failure is logged, never raised; the sweeps admit within seconds."""
        try:
            await self.released(tenant_id)
        except Exception as exc:
            logger.warning(
                "next waiting run not admitted; the sweep will", extra={"error": repr(exc)}
            )

    async def dispatch(self, tenant_id: uuid.UUID) -> int:
        """Admit the tenant's waiting runs into its free slots and publish them."""
        return await self._admit_and_publish([tenant_id])

    async def sweep(self) -> int:
        """Admit for every tenant with waiting runs, publishing round robin across them."""
        if not self.enabled:
            return 0
        async with self.engine.connect() as connection:
            tenants = list(
                (await connection.execute(_WAITING_TENANTS, {"limit": SWEEP_TENANTS})).scalars()
            )
        return await self._admit_and_publish(tenants)

    async def _admit_and_publish(self, tenants: list[uuid.UUID]) -> int:
        """One transaction: lock the tenants (in id order: two sweeps never wait on each
        other in a cycle), admit, publish round robin across them, mark published, commit.

        Publishing before the commit means no run is ever left admitted but unpublished by a
        process killed in between: its transaction rolls back and the runs wait again. A
        message sent before such a rollback (or a refused publish, which rolls back too)
        reaches a worker whose claim finds the run unadmitted, and admits it then or parks it
        (the path of a delayed run come due): nothing runs twice, nothing is lost."""
        if not tenants:
            return 0
        try:
            async with self.engine.begin() as connection:
                batches: list[list[Admitted]] = []
                for tenant_id in sorted(tenants):
                    await lock(connection, tenant_id)
                    batches.append(await admit(connection, tenant_id, self.default_cap))
                interleaved = [
                    batch[i]
                    for i in range(max(map(len, batches), default=0))
                    for batch in batches
                    if i < len(batch)
                ]
                for run in interleaved:
                    await self.publisher.publish(
                        str(run.id), run.task, run.queue, None, str(run.tenant_id), run.request_id
                    )
                if interleaved:
                    run_ids = [run.id for run in interleaved]
                    await connection.execute(ledger.MARK_PUBLISHED, {"run_ids": run_ids})
        except BrokerUnavailableError:
            logger.warning("waiting runs not admitted: the broker refused their publish")
            return 0
        RUNS_ADMITTED.inc(len(interleaved))
        return len(interleaved)

    async def publish(self, admitted: list[Admitted]) -> int:
        """Publish runs admitted by a transaction already committed (the gateway's, which
        stored a run and admitted older ones with it) and mark them published. A run the
        broker refuses stays admitted and unpublished: beat's outbox sends it again."""
        done: list[uuid.UUID] = []
        for run in admitted:
            try:
                await self.publisher.publish(
                    str(run.id), run.task, run.queue, None, str(run.tenant_id), run.request_id
                )
            except BrokerUnavailableError:
                logger.warning("admitted runs left to the outbox: the broker refused them")
                break
            done.append(run.id)
        if done:
            await once_more_if_dropped(self.engine, partial(ledger.write_published, done))
        RUNS_ADMITTED.inc(len(done))
        return len(done)


def install(services: Services, publisher: RunPublisher) -> Dispatcher | None:
    """Give a role's services the dispatcher that admits runs when slots free (once)."""
    if services.database is None:
        return None
    if not isinstance(services.admission, Dispatcher):
        services.admission = Dispatcher(
            services.database, publisher, services.settings.tenant_max_runs_in_flight
        )
    return services.admission


def _has_waiting(tenant_id: uuid.UUID) -> Any:
    async def waiting(connection: AsyncConnection, _: bool) -> bool:
        return bool(await connection.scalar(_HAS_WAITING, {"tenant": tenant_id}))

    return waiting
