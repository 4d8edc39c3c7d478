"""Fair share: runs wait in the ledger until their tenant's share of the platform has room.

A run is *admitted* (``admitted_at`` set) when it takes a slot of its tenant's share; only an
admitted run is published to a work queue, so the broker holds few of each tenant's messages
and another tenant's run never queues behind a long backlog. A run not admitted yet is
``queued`` with no ``admitted_at`` (``waiting_for_capacity``), never published.

The share is work-conserving (`_ROOM`): the platform has `slots` (FAIR_SHARE_SLOTS, or the
sum of WORKER_CONCURRENCY of the worker processes online, `worker_slots`); the tenants with
runs waiting (*contenders*) divide equally what the other tenants do not hold. A tenant alone
takes every free slot; a second tenant arriving is admitted its half at once, and the first
gets no new slot until it holds less than its half: shares converge as runs finish, with no
run pre-empted. A hard cap (the tenant's own, else its plan's runs_in_flight, else
TENANT_MAX_RUNS_IN_FLIGHT) bounds a share.

A slot frees when a run becomes final; whoever made it final (the worker, a cancel, the dead
letter archive) admits that tenant's next waiting runs, or another tenant's when it has none
waiting (`Dispatcher.released`). Every worker process (every 2 s) and the beat leader sweep
as a backstop. An admission commits before it publishes, so a run is claimable the moment its
message arrives; a process killed in between leaves runs admitted and unpublished, which
beat's outbox publishes (TASK_REPUBLISH_AFTER_SECONDS). Each admission holds a
transaction-scoped advisory lock on its tenant (locks taken in id order), so two processes
admitting for one tenant at once never pass its share.

Delayed runs wait in the broker's delay queues unadmitted; when one comes due, the worker
admits it then, or, when its tenant's share is full, parks it (``queued``, unpublished) for
the next slot. See docs/operations.md, "Fair share".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import Table, delete, func, insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.db.engine import in_transaction, once_more_if_dropped
from switchyard.db.models import TaskRun, WorkerSlots
from switchyard.db.models.task_run import IN_FLIGHT, UNADMITTED_DUE, WAITING
from switchyard.platform.metrics import RUNS_ADMITTED
from switchyard.platform.publisher import PublishedRun, RunBroker, RunMessage
from switchyard.platform.runs import ledger

if TYPE_CHECKING:
    from switchyard.settings import Settings

logger = logging.getLogger(__name__)

# The advisory lock namespace of admissions (the two-key form; beat's leader lock is a
# one-key lock, which PostgreSQL keeps apart): ("SY", hashtext(tenant id)).
LOCK_NAMESPACE: Final = 0x5359
WAITING_FOR_CAPACITY: Final = "waiting_for_capacity"
IN_FLIGHT_STATES: Final = ("queued", "started", "retrying")
# Tenants one sweep admits for, and tenants with runs waiting that a share counts (past that
# many contenders every share is 1 slot anyway at any realistic size).
SWEEP_TENANTS: Final = 500
# A worker process's slots count while its last report is at most this old.
SLOTS_FRESH_SECONDS: Final = 15.0
# A release that admitted nothing for its own tenant sweeps for the others at most this often.
SWEEP_AFTER_RELEASE_SECONDS: Final = 0.05
_RUNS = cast(Table, TaskRun.__table__)
_SLOTS = cast(Table, WorkerSlots.__table__)

_LOCK = text("SELECT pg_advisory_xact_lock(:namespace, hashtext(CAST(:tenant AS text)))")
_HOLDING = IN_FLIGHT
_WAITING = WAITING
# The tenants with runs waiting, read from `ix_task_runs_waiting` one tenant at a time (a
# loose index scan: the cost is per tenant, not per waiting run, of which there may be
# millions), at most :most_tenants of them.
_WAITING_TENANTS_CTE = f"""
    waiting_tenants(tenant_id, depth) AS (
        (SELECT tenant_id, 1 FROM task_runs WHERE {_WAITING} ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT r.tenant_id FROM task_runs AS r
                WHERE {_WAITING} AND r.tenant_id > w.tenant_id
                ORDER BY r.tenant_id LIMIT 1),
               w.depth + 1
        FROM waiting_tenants AS w
        WHERE w.tenant_id IS NOT NULL AND w.depth < :most_tenants
    )"""  # noqa: S608 - constant fragments
# How many more runs :tenant may have admitted now (`room.n`), and its share (`room.allowed`):
# the slots that tenants without runs waiting do not hold, divided among the contenders
# (:tenant among them), and never less than an equal part of the slots among every tenant
# with runs in flight or waiting; at least 1; within the tenant's hard cap.
_ROOM = f"""
    WITH RECURSIVE {_WAITING_TENANTS_CTE},
    contenders AS (
        SELECT tenant_id FROM waiting_tenants WHERE tenant_id IS NOT NULL
        UNION SELECT CAST(:tenant AS uuid)
    ),
    held AS (
        SELECT tenant_id, count(*) AS n FROM task_runs WHERE {_HOLDING} GROUP BY tenant_id
    ),
    platform AS (
        SELECT COALESCE(
            NULLIF(:slots, 0),
            (SELECT sum(slots) FROM worker_slots
             WHERE seen_at > now() - make_interval(secs => :fresh_seconds)),
            :default_slots
        ) AS slots
    ),
    share AS (
        SELECT
            LEAST(
                COALESCE(NULLIF(COALESCE(
                    -- its own cap, else its plan's runs_in_flight (its override of it first)
                    (SELECT COALESCE(
                        t.max_runs_in_flight,
                        CASE WHEN t.limit_overrides -> 'runs_in_flight' IS NOT NULL
                             THEN CAST(t.limit_overrides ->> 'runs_in_flight' AS integer)
                             ELSE p.runs_in_flight END)
                     FROM tenants AS t LEFT JOIN plans AS p ON p.id = t.plan_id
                     WHERE t.id = :tenant),
                    :hard_cap
                ), 0), 2147483647),
                GREATEST(
                    1,
                    -- what the others leave, divided among the contenders ...
                    ((SELECT slots FROM platform)
                     - COALESCE((SELECT sum(n) FROM held WHERE tenant_id NOT IN
                                 (SELECT tenant_id FROM contenders)), 0))
                    / (SELECT count(*) FROM contenders),
                    -- ... but never less than an equal part among every tenant with runs
                    -- in flight or waiting, whatever the others hold (runs piled past the
                    -- slots, or stuck in a queue no worker reads, starve no one).
                    (SELECT slots FROM platform)
                    / ((SELECT count(*) FROM contenders)
                       + (SELECT count(*) FROM held WHERE tenant_id NOT IN
                          (SELECT tenant_id FROM contenders)))
                )
            ) AS allowed,
            COALESCE((SELECT n FROM held WHERE tenant_id = :tenant), 0) AS mine
    ),
    room AS (SELECT allowed, mine, GREATEST(0, allowed - mine) AS n FROM share)
"""  # noqa: S608 - constant fragments; every value is a bound parameter
_ADMIT = text(
    f"""{_ROOM}
    UPDATE task_runs SET admitted_at = now()
    WHERE id IN (
        SELECT id FROM task_runs
        WHERE tenant_id = :tenant AND {_WAITING}
        ORDER BY created_at
        LIMIT (SELECT n FROM room)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, task, queue, tenant_id, request_id, trace_parent, created_at
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)
_ADMIT_DUE = text(
    f"""{_ROOM}
    UPDATE task_runs SET admitted_at = now()
    WHERE id = :run_id AND {UNADMITTED_DUE} AND (SELECT n FROM room) > 0
    RETURNING id
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)
_PARK = text(
    f"""
    UPDATE task_runs SET state = 'queued', eta = NULL, published_at = NULL
    WHERE id = :run_id AND {UNADMITTED_DUE}
    RETURNING id
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)
_ADMITTED = text("SELECT admitted_at IS NOT NULL FROM task_runs WHERE id = :run_id")
_HAS_WAITING = text(
    f"SELECT EXISTS (SELECT 1 FROM task_runs WHERE tenant_id = :tenant AND {_WAITING})"  # noqa: S608
)
_ANY_WAITING = text(f"SELECT EXISTS (SELECT 1 FROM task_runs WHERE {_WAITING})")  # noqa: S608
_WAITING_TENANTS = text(
    f"WITH RECURSIVE {_WAITING_TENANTS_CTE} "  # noqa: S608 - constant fragments
    "SELECT tenant_id FROM waiting_tenants WHERE tenant_id IS NOT NULL"
)
_COUNTS = text(
    f"""{_ROOM}
    SELECT
      (SELECT count(*) FROM task_runs WHERE tenant_id = :tenant AND {_WAITING}) AS waiting,
      (SELECT count(*) FROM task_runs WHERE tenant_id = :tenant AND {_HOLDING}) AS in_flight,
      (SELECT count(*) FROM task_runs WHERE tenant_id = :tenant AND admitted_at IS NOT NULL
         AND state = 'started') AS started,
      (SELECT allowed FROM room) AS allowed
    """  # noqa: S608 - constant fragments; every value is a bound parameter
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How runs are admitted: fair share on or off, the slots shares divide, a hard cap."""

    enabled: bool = True
    slots: int = 0  # 0: the slots of the worker processes online
    default_slots: int = 100  # ...when none has reported itself
    hard_cap: int = 0  # 0: none (a tenant's own cap still applies)

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            enabled=settings.fair_share,
            slots=settings.fair_share_slots,
            default_slots=settings.worker_concurrency,
            hard_cap=settings.tenant_max_runs_in_flight,
        )

    def parameters(self, tenant_id: uuid.UUID) -> dict[str, Any]:
        return {
            "tenant": tenant_id,
            "slots": self.slots,
            "default_slots": self.default_slots,
            "hard_cap": self.hard_cap,
            "fresh_seconds": SLOTS_FRESH_SECONDS,
            "most_tenants": SWEEP_TENANTS,
        }


@dataclass(frozen=True, slots=True)
class Admitted:
    """A run that just got a slot: what its publish needs."""

    id: uuid.UUID
    task: str
    queue: str
    tenant_id: uuid.UUID
    request_id: str | None
    trace_parent: str | None
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
    connection: AsyncConnection, tenant_id: uuid.UUID, policy: Policy
) -> list[Admitted]:
    """Give the tenant's oldest waiting runs the room its share has. In a transaction that
    holds the tenant's lock (`lock`); the caller publishes what it returns once committed."""
    rows = await connection.execute(_ADMIT, policy.parameters(tenant_id))
    admitted = [Admitted(**row._mapping) for row in rows]
    admitted.sort(key=lambda run: run.created_at)
    return admitted


async def record(connection: AsyncConnection, run: TaskRun, policy: Policy) -> list[Admitted]:
    """Store a new `queued` run (a transient TaskRun, unadmitted) and admit what its tenant
    has room for, in the caller's transaction under the tenant's lock (held until it ends):
    the new run itself when no older run of the tenant waits and its share has room.
    IntegrityError as for any insert."""
    await lock(connection, run.tenant_id)
    await connection.execute(insert(_RUNS), ledger.insert_values(run))
    return await admit(connection, run.tenant_id, policy)


async def store(
    connection: AsyncConnection, runs: Sequence[ledger.Stored], policy: Policy
) -> tuple[set[uuid.UUID], list[Admitted]]:
    """Store new runs of any tenants in one statement (ledger.record_many: the ids stored)
    and, with fair share on, admit what each of their tenants has room for, oldest first,
    under the tenants' locks (taken in id order: two groups never wait on each other in a
    cycle). With fair share off the runs come admitted already."""
    if not policy.enabled:
        return await ledger.record_many(connection, runs), []
    tenants = sorted({run.tenant_id for run in runs})
    for tenant_id in tenants:
        await lock(connection, tenant_id)
    stored = await ledger.record_many(connection, runs)
    admitted: list[Admitted] = []
    for tenant_id in tenants:
        admitted += await admit(connection, tenant_id, policy)
    return stored, admitted


async def admit_due(
    connection: AsyncConnection, run_id: uuid.UUID, tenant_id: uuid.UUID, policy: Policy
) -> bool:
    """A run delivered unadmitted (a delayed run come due): admitted if its tenant's share has
    room, else parked as waiting. True when it is admitted (by this call or before)."""
    await lock(connection, tenant_id)
    values = {"run_id": run_id, **policy.parameters(tenant_id)}
    if (await connection.execute(_ADMIT_DUE, values)).first() is not None:
        return True
    if await connection.scalar(_ADMITTED, {"run_id": run_id}):
        return True
    await connection.execute(_PARK, {"run_id": run_id})
    return False


async def share(connection: AsyncConnection, tenant_id: uuid.UUID, policy: Policy) -> Share:
    row = (await connection.execute(_COUNTS, policy.parameters(tenant_id))).one()
    return Share(
        limit=int(row.allowed) if policy.enabled else None,
        in_flight=int(row.in_flight),
        started=int(row.started),
        waiting_for_capacity=int(row.waiting),
    )


async def report_slots(engine: AsyncEngine, name: str, slots: int) -> None:
    """A worker process is online with `slots` runs at once (every few seconds)."""
    statement = pg_insert(_SLOTS).values(name=name, slots=slots, seen_at=func.now())
    statement = statement.on_conflict_do_update(
        index_elements=[_SLOTS.c.name],
        set_={"slots": statement.excluded.slots, "seen_at": statement.excluded.seen_at},
    )

    async def write(connection: AsyncConnection, _: bool) -> None:
        await connection.execute(statement)
        # Processes gone long ago (killed, never said goodbye) leave no row behind.
        await connection.execute(
            delete(_SLOTS).where(_SLOTS.c.seen_at < func.now() - timedelta(hours=1))
        )

    await once_more_if_dropped(engine, write)


async def forget_slots(engine: AsyncEngine, name: str) -> None:
    """A worker process stops: its slots no longer count, at once."""

    async def forget(connection: AsyncConnection, _: bool) -> None:
        await connection.execute(delete(_SLOTS).where(_SLOTS.c.name == name))

    await once_more_if_dropped(engine, forget)


class Dispatcher:
    """Admits waiting runs when a slot frees and publishes them: one per process, on its loop
    (the worker's, the gateway's, beat's)."""

    def __init__(self, engine: AsyncEngine, publisher: RunBroker, policy: Policy) -> None:
        self.engine = engine
        self.publisher = publisher
        self.policy = policy
        self._active: set[uuid.UUID] = set()  # tenants being admitted for, now
        self._again: set[uuid.UUID] = set()  # ...and slots of theirs freed meanwhile
        self._sweeping: asyncio.Task[None] | None = None
        self._sweep_again = False

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    async def released(self, tenant_id: uuid.UUID) -> int:
        """A run of the tenant became final: admit and publish its next waiting runs, or, when
        it has none waiting or no room, let the other tenants' waiting runs have the slot.

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
                    break
        finally:
            self._active.discard(tenant_id)
            self._again.discard(tenant_id)
        if admitted == 0:
            self._sweep_soon()
        return admitted

    def _sweep_soon(self) -> None:
        """Let the other tenants' waiting runs have a slot this tenant did not take: one sweep
        at a time in this process, at most every SWEEP_AFTER_RELEASE_SECONDS."""
        if self._sweeping is not None and not self._sweeping.done():
            self._sweep_again = True
            return
        self._sweeping = asyncio.create_task(self._sweep_while_asked(), name="admission-sweep")

    async def _sweep_while_asked(self) -> None:
        while True:
            self._sweep_again = False
            try:
                if await once_more_if_dropped(self.engine, _any_waiting):
                    await self.sweep()
            except Exception as exc:
                logger.warning("admission sweep failed", extra={"error": repr(exc)})
            await asyncio.sleep(SWEEP_AFTER_RELEASE_SECONDS)
            if not self._sweep_again:
                return

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
        """Admit the tenant's waiting runs into its share's room and publish them."""
        return await self._admit_and_publish([tenant_id])

    async def sweep(self) -> int:
        """Admit for every tenant with waiting runs, publishing round robin across them."""
        if not self.enabled:
            return 0

        async def waiting(connection: AsyncConnection, _: bool) -> list[uuid.UUID]:
            rows = await connection.execute(_WAITING_TENANTS, {"most_tenants": SWEEP_TENANTS})
            return list(rows.scalars())

        return await self._admit_and_publish(await once_more_if_dropped(self.engine, waiting))

    async def _admit_and_publish(self, tenants: list[uuid.UUID]) -> int:
        """Admit under the tenants' locks (in id order: two sweeps never wait on each other in
        a cycle) and commit; then publish round robin across the tenants and mark what the
        broker confirmed. The admission is committed before any message leaves, so a worker
        that receives one finds its run admitted; a run the broker refused stays admitted and
        unpublished for beat's outbox."""
        if not tenants:
            return 0

        async def admit_all(connection: AsyncConnection) -> list[list[Admitted]]:
            batches: list[list[Admitted]] = []
            for tenant_id in sorted(tenants):
                await lock(connection, tenant_id)
                batches.append(await admit(connection, tenant_id, self.policy))
            return batches

        batches = await in_transaction(self.engine, admit_all)
        interleaved = [
            batch[i]
            for i in range(max(map(len, batches), default=0))
            for batch in batches
            if i < len(batch)
        ]
        return await self.publish(interleaved)

    async def publish(self, admitted: Sequence[PublishedRun]) -> int:
        """Publish runs whose admission has committed, in one burst, and mark those the
        broker confirmed published. A run the broker refuses stays admitted and unpublished:
        beat's outbox sends it again."""
        if not admitted:
            return 0
        confirmed = await self.publisher.publish_many([RunMessage.of(run) for run in admitted])
        done = [run.id for run, ok in zip(admitted, confirmed, strict=True) if ok]
        if len(done) < len(admitted):
            logger.warning(
                "admitted runs left to the outbox: the broker refused them",
                extra={"runs": len(admitted) - len(done)},
            )
        if done:
            try:
                await once_more_if_dropped(self.engine, partial(ledger.write_published, done))
            except Exception as exc:  # costs at most a duplicate message, which a claim drops
                logger.warning("published_at not recorded", extra={"error": repr(exc)})
        RUNS_ADMITTED.inc(len(done))
        return len(done)


def dispatcher_for(publisher: RunBroker, settings: Settings) -> Callable[[AsyncEngine], Dispatcher]:
    """What a role with a broker gives `Services.create` to build its dispatcher (one per
    process, on the role's database engine)."""
    policy = Policy.of(settings)
    return lambda engine: Dispatcher(engine, publisher, policy)


def _has_waiting(tenant_id: uuid.UUID) -> Any:
    async def waiting(connection: AsyncConnection, _: bool) -> bool:
        return bool(await connection.scalar(_HAS_WAITING, {"tenant": tenant_id}))

    return waiting


async def _any_waiting(connection: AsyncConnection, _: bool) -> bool:
    return bool(await connection.scalar(_ANY_WAITING))
