"""Fair share that wastes no capacity, on the real database and a broker of this test alone:
a tenant alone takes every slot of the platform; a second tenant arriving is admitted its
half at once and the first gets no new slot until it holds less than its half; a tenant
without runs waiting leaves its freed slots to the others; the platform's slots are the
workers online (their reports), and a hard cap still bounds a share."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.db.models import RunState, TaskRun, Tenant, WorkerSlots
from switchyard.platform.broker import Broker
from switchyard.platform.runs import admission, ledger
from switchyard.platform.runs.admission import Dispatcher, Policy
from switchyard.settings import Settings
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.messaging import ready_messages
from tests.fixtures.tasks import DELIVERY_LIMIT, unique

SLOTS = 8


@pytest.fixture
def engine(own_engine: AsyncEngine) -> AsyncEngine:
    """This test's own database: nothing else waits or holds slots in it."""
    return own_engine


@pytest.fixture
def settings(make_settings: SettingsFactory, own_broker: str) -> Settings:
    return make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        fair_share=True,
        fair_share_slots=SLOTS,
    )


@pytest.fixture
async def dispatcher(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Dispatcher]:
    broker = Broker.create(settings)
    assert broker is not None
    broker.publisher.declare_topology()
    yield Dispatcher(engine, broker.publisher, Policy.of(settings))
    broker.close()


async def new_tenant(engine: AsyncEngine, **fields: object) -> uuid.UUID:
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        tenant = Tenant(name="Share", slug=unique("share"), **fields)
        session.add(tenant)
    return tenant.id


async def submit(
    engine: AsyncEngine, tenant_id: uuid.UUID, count: int, policy: Policy
) -> list[admission.Admitted]:
    runs = [
        ledger.NewRun(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            task="system.echo",
            definition_id=None,
            queue="default",
            payload={"message": "share"},
            state=RunState.QUEUED,
            attempts=0,
            eta=None,
            idempotency_key=None,
            request_hash=None,
            request_id=None,
            submitted_by=None,
            replay_of=None,
        )
        for _ in range(count)
    ]
    async with engine.begin() as connection:
        _, admitted = await admission.store(connection, runs, policy)
    return admitted


async def in_flight(engine: AsyncEngine, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            select(TaskRun.id)
            .where(
                TaskRun.tenant_id == tenant_id,
                TaskRun.admitted_at.is_not(None),
                TaskRun.state.in_((RunState.QUEUED, RunState.STARTED, RunState.RETRYING)),
            )
            .order_by(TaskRun.admitted_at, TaskRun.id)
        )
        return list(rows)


async def finish(engine: AsyncEngine, run_ids: list[uuid.UUID]) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            update(TaskRun)
            .where(TaskRun.id.in_(run_ids))
            .values(state=RunState.SUCCEEDED, finished_at=datetime.now(UTC))
        )


async def test_a_tenant_alone_takes_every_slot_and_a_second_gets_its_half_at_once(
    engine: AsyncEngine, dispatcher: Dispatcher, own_broker: str
) -> None:
    policy = dispatcher.policy
    a = await new_tenant(engine)
    assert len(await submit(engine, a, 20, policy)) == SLOTS  # every slot, not a fixed cap
    assert len(await in_flight(engine, a)) == SLOTS

    b = await new_tenant(engine)
    assert len(await submit(engine, b, 20, policy)) == SLOTS // 2  # its half, at once
    assert len(await in_flight(engine, a)) == SLOTS  # nothing of A's is taken back

    # A's runs end one by one: A gets no new slot until it holds less than its half.
    held_by_a = await in_flight(engine, a)
    for ended, run_id in enumerate(held_by_a[: SLOTS // 2], start=1):
        await finish(engine, [run_id])
        assert await dispatcher.released(a) == 0
        assert len(await in_flight(engine, a)) == SLOTS - ended
    await finish(engine, held_by_a[SLOTS // 2 : SLOTS // 2 + 1])
    # Below its half: one more, back to the half — admitted by this release, or by the sweep
    # an earlier release asked for if it comes first (both under A's lock: never both).
    await dispatcher.released(a)
    assert len(await in_flight(engine, a)) == SLOTS // 2
    assert len(await in_flight(engine, b)) == SLOTS // 2

    share = await admission_share(engine, a, policy)
    assert (share.limit, share.in_flight, share.waiting_for_capacity) == (SLOTS // 2, 4, 11)
    # The dispatcher published what it admitted (the submissions here only stored theirs).
    assert await ready_messages(own_broker, "default", 1) == 1


async def test_slots_a_tenant_leaves_go_to_the_tenants_still_waiting(
    engine: AsyncEngine, dispatcher: Dispatcher
) -> None:
    policy = dispatcher.policy
    a, b = await new_tenant(engine), await new_tenant(engine)
    await submit(engine, a, SLOTS, policy)  # all it wants: nothing of it waits
    # A holds every slot: B is admitted its equal part at once all the same (no pre-emption:
    # its runs start as A's end).
    assert len(await submit(engine, b, 10, policy)) == SLOTS // 2
    await finish(engine, await in_flight(engine, a))
    # A has nothing waiting: its release sweeps, and B takes the slots A left.
    assert await dispatcher.released(a) == 0
    deadline = asyncio.get_running_loop().time() + 5
    while len(await in_flight(engine, b)) < SLOTS:
        assert asyncio.get_running_loop().time() < deadline, "B never got A's slots"
        await asyncio.sleep(0.02)
    assert len(await in_flight(engine, b)) == SLOTS


async def test_a_hard_cap_bounds_a_share_and_a_tenants_own_cap_overrides_it(
    engine: AsyncEngine, dispatcher: Dispatcher
) -> None:
    capped = Policy(slots=SLOTS, hard_cap=3)
    a = await new_tenant(engine)
    assert len(await submit(engine, a, 10, capped)) == 3
    b = await new_tenant(engine, max_runs_in_flight=5)
    # Its own cap (5) instead of the setting's (3), and within that its half of the slots.
    assert len(await submit(engine, b, 10, capped)) == SLOTS // 2
    c = await new_tenant(engine, max_runs_in_flight=1)
    assert len(await submit(engine, c, 10, dispatcher.policy)) == 1


async def test_runs_piled_up_elsewhere_starve_no_one(
    engine: AsyncEngine, dispatcher: Dispatcher
) -> None:
    """Tenants holding far more runs in flight than the platform has slots (a queue no worker
    reads, say) leave every contender an equal part of the slots all the same."""
    policy = dispatcher.policy
    for _ in range(3):
        holder = await new_tenant(engine)
        async with engine.begin() as connection:
            await connection.execute(
                insert(TaskRun),
                [
                    {
                        "tenant_id": holder,
                        "task": "system.echo",
                        "queue": "llm",
                        "payload": {},
                        "state": RunState.QUEUED,
                        "attempts": 0,
                        "admitted_at": datetime.now(UTC),
                    }
                    for _ in range(20)
                ],
            )
    a = await new_tenant(engine)
    assert len(await submit(engine, a, 10, policy)) == SLOTS // 4  # 8 slots, 4 tenants


async def test_the_platforms_slots_are_those_of_the_workers_seen_lately(
    engine: AsyncEngine,
) -> None:
    from_workers = Policy(slots=0, default_slots=2)
    a = await new_tenant(engine)
    # No worker has reported: WORKER_CONCURRENCY of one.
    assert len(await submit(engine, a, 1, from_workers)) == 1
    assert len(await submit(engine, a, 30, from_workers)) == 1

    await admission.report_slots(engine, "host-1:10", 6)
    await admission.report_slots(engine, "host-2:20", 4)
    async with engine.begin() as connection:  # a process gone quiet: not counted
        await connection.execute(
            insert(WorkerSlots).values(
                name="host-3:30", slots=100, seen_at=datetime.now(UTC) - timedelta(minutes=1)
            )
        )
    async with engine.begin() as connection:
        await admission.lock(connection, a)
        admitted = await admission.admit(connection, a, from_workers)
    assert len(admitted) == 10 - 2  # 6 + 4 slots, 2 held already

    await admission.forget_slots(engine, "host-1:10")
    share = await admission_share(engine, a, from_workers)
    assert (share.limit, share.in_flight) == (4, 10)


async def admission_share(
    engine: AsyncEngine, tenant_id: uuid.UUID, policy: Policy
) -> admission.Share:
    async with engine.connect() as connection:
        return await admission.share(connection, tenant_id, policy)
