"""The worker's core in process, on the real PostgreSQL and Redis, without a worker process
or a RabbitMQ: a delivery (platform.delivery.deliver) on a WorkerLoop of the test's own, from
the claim to the settlement Celery would carry out, with messages taken from and settled on
the in-memory broker (`tests.fakes.broker`, whose semantics test_broker_semantics.py checks
against RabbitMQ's). Claim → run → outcome → the next run admitted and published; a backlog
drained one slot at a time; a retry through a broker-held delay; soft and hard time limits; a
cancel of a started run; a graceful stop handing runs back; the stall watchdog; a crash
between outcome and ack; a run whose worker died; a bookkeeping failure handed back, never a
task failure."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.db.models import DeadLetter, RunState, TaskRun
from switchyard.domains import registry_for
from switchyard.platform import execution, runtime
from switchyard.platform.celery_app import AMQP_TRANSPORT
from switchyard.platform.delivery import Delivery, Settlement, deliver
from switchyard.platform.publisher import RunMessage
from switchyard.platform.registry import TaskSpec
from switchyard.platform.runs import admission, ledger
from switchyard.settings import Settings
from tests.fakes.broker import InMemoryBroker, Taken
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.tasks import insert_run

DELIVERY_LIMIT = 2


@pytest.fixture
def engine(own_engine: AsyncEngine) -> AsyncEngine:
    """This test's own database: its tenants, slots and waiting runs only."""
    return own_engine


@pytest.fixture
def settings(make_settings: SettingsFactory, own_database: URL) -> Settings:
    return make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        task_delivery_limit=DELIVERY_LIMIT,
        fair_share=True,
        fair_share_slots=1,
        worker_cancel_poll_seconds=0.05,
        worker_stall_seconds=0.2,
    )


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker(delivery_limit=DELIVERY_LIMIT)


@pytest.fixture
def loop(settings: Settings, broker: InMemoryBroker) -> Iterator[runtime.WorkerLoop]:
    current = runtime.WorkerLoop(
        settings, "worker", admission.dispatcher_for(broker, settings)
    ).start()
    yield current
    current.close()


def spec(settings: Settings, name: str, **changes: Any) -> TaskSpec[Any]:
    found = registry_for(settings).get(name)
    assert found is not None
    return dataclasses.replace(found, **changes)


def delivery(run: TaskRun, *, redelivered: bool = False, returned: int = 0) -> Delivery:
    return Delivery(
        message_id=str(run.id),
        args=(str(run.id),),
        kwargs={},
        tenant=str(run.tenant_id),
        request_id=None,
        redelivered=redelivered,
        returned=returned,
    )


def settle(
    loop: runtime.WorkerLoop, task: TaskSpec[Any], run: TaskRun, **options: Any
) -> Settlement:
    return loop.call(deliver(loop, task, delivery(run, **options), AMQP_TRANSPORT), 30)


async def take(broker: InMemoryBroker, queue: str = "default", within: float = 10.0) -> Taken:
    """The next message of `queue` once there is one (a dispatcher publishes from the loop)."""
    deadline = time.monotonic() + within
    while (taken := broker.take(queue)) is None:
        assert time.monotonic() < deadline, f"no message in {queue} in time"
        await asyncio.sleep(0.01)
    return taken


def work(
    loop: runtime.WorkerLoop, settings: Settings, broker: InMemoryBroker, taken: Taken
) -> Settlement:
    """What a worker does with a message: deliver it, and settle it on the broker."""
    settled = loop.call(
        deliver(loop, spec(settings, taken.message.task), taken.delivery(), AMQP_TRANSPORT), 30
    )
    broker.settle(taken, settled)
    return settled


async def stored(engine: AsyncEngine, run_id: uuid.UUID) -> TaskRun:
    async with engine.connect() as connection:
        row = (await connection.execute(select(TaskRun).where(TaskRun.id == run_id))).one()
    return TaskRun(**row._mapping)


async def until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _published(engine: AsyncEngine, run_id: uuid.UUID) -> bool:
    return (await stored(engine, run_id)).published_at is not None


async def test_a_run_is_claimed_run_recorded_and_its_slot_goes_to_the_next(
    loop: runtime.WorkerLoop,
    settings: Settings,
    broker: InMemoryBroker,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
) -> None:
    run = await insert_run(engine, tenant_id, payload={"message": "hi"})
    waiting = await insert_run(engine, tenant_id, admitted_at=None)  # one slot: it waits
    await broker.publish_many([RunMessage.of(run)])

    assert work(loop, settings, broker, await take(broker)) == Settlement("ack")

    done = await stored(engine, run.id)
    assert (done.state, done.attempts, done.result) == (RunState.SUCCEEDED, 1, {"message": "hi"})
    assert done.started_at is not None
    assert done.finished_at is not None

    # The run's end gave its slot to the waiting run: admitted, published, and run from there.
    following = await take(broker)
    assert following.message.run_id == str(waiting.id)
    assert (await stored(engine, waiting.id)).admitted_at is not None
    # `published_at` is marked after the publish, in batches: the message may come first.
    await until(lambda: _published(engine, waiting.id))
    assert work(loop, settings, broker, following) == Settlement("ack")
    assert (await stored(engine, waiting.id)).state is RunState.SUCCEEDED


async def test_a_backlog_drains_through_the_broker_one_slot_at_a_time(
    loop: runtime.WorkerLoop,
    settings: Settings,
    broker: InMemoryBroker,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
) -> None:
    first = await insert_run(engine, tenant_id)
    backlog = [await insert_run(engine, tenant_id, admitted_at=None) for _ in range(4)]
    await broker.publish_many([RunMessage.of(first)])

    ran = []
    for _ in range(5):
        taken = await take(broker)
        assert broker.depth("default") == 0  # one slot: never two of its runs queued
        assert work(loop, settings, broker, taken) == Settlement("ack")
        ran.append(taken.message.run_id)

    assert ran == [str(run.id) for run in [first, *backlog]]  # in the order they came
    for run in [first, *backlog]:
        row = await stored(engine, run.id)
        assert (row.state, row.attempts) == (RunState.SUCCEEDED, 1)
    assert broker.take("default") is None
    assert broker.dead_letters() == []


async def test_a_retry_waits_out_its_backoff_in_the_broker_and_then_succeeds(
    loop: runtime.WorkerLoop,
    settings: Settings,
    broker: InMemoryBroker,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
) -> None:
    run = await insert_run(engine, tenant_id, task="system.fail", payload={"fail_attempts": 1})
    await broker.publish_many([RunMessage.of(run)])
    failed_at = time.monotonic()
    retried = work(loop, settings, broker, await take(broker))
    assert (retried.kind, retried.delay) == ("retry", 1)
    assert broker.take("default") is None  # its copy is held until due

    again = await take(broker)
    assert time.monotonic() - failed_at >= 1.0
    assert (again.message.run_id, again.delivery().returned) == (str(run.id), 1)
    assert work(loop, settings, broker, again) == Settlement("ack")
    row = await stored(engine, run.id)
    assert (row.state, row.attempts) == (RunState.SUCCEEDED, 2)


async def test_a_handler_error_is_the_runs_outcome_and_a_retry_its_backoff(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    fail = spec(settings, "system.fail")
    retried = await insert_run(engine, tenant_id, task="system.fail", payload={"fail_attempts": 1})
    settled = settle(loop, fail, retried)
    assert (settled.kind, settled.delay) == ("retry", 1)
    assert (await stored(engine, retried.id)).state is RunState.RETRYING

    failed = await insert_run(
        engine, tenant_id, task="system.fail", payload={"retryable": False, "message": "no"}
    )
    settled = settle(loop, fail, failed)
    assert settled.kind == "reject"  # to the dead-letter exchange
    row = await stored(engine, failed.id)
    assert (row.state, row.error_type, row.error_message) == (RunState.FAILED, "ValueError", "no")


async def test_the_soft_limit_fails_the_run_and_the_hard_limit_cancels_it(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    soft = spec(settings, "system.sleep", soft_time_limit=0.1, time_limit=5)
    run = await insert_run(engine, tenant_id, task="system.sleep", payload={"seconds": 3})
    assert settle(loop, soft, run).kind == "reject"
    assert (await stored(engine, run.id)).error_type == "TimeoutError"

    hard = spec(settings, "system.sleep", soft_time_limit=10, time_limit=0.1)
    run = await insert_run(engine, tenant_id, task="system.sleep", payload={"seconds": 3})
    assert settle(loop, hard, run).kind == "reject"
    row = await stored(engine, run.id)
    assert (row.state, row.error_type) == (RunState.FAILED, "TimeLimitExceededError")


async def test_a_run_cancelled_while_it_runs_stops_at_its_next_await(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    run = await insert_run(engine, tenant_id, task="system.sleep", payload={"seconds": 30})
    future = asyncio.run_coroutine_threadsafe(
        deliver(loop, spec(settings, "system.sleep"), delivery(run), AMQP_TRANSPORT), loop.loop
    )

    async def started() -> bool:
        return (await stored(engine, run.id)).state is RunState.STARTED

    await until(started)
    async with async_sessionmaker(engine).begin() as session:
        assert await ledger.cancel(session, run.id) is not None
    assert await asyncio.wrap_future(future) == Settlement("ignore")
    assert (await stored(engine, run.id)).state is RunState.CANCELLED


async def test_a_graceful_stop_hands_the_runs_in_flight_back(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    sleep = spec(settings, "system.sleep")
    runs = [
        await insert_run(engine, tenant_id, task="system.sleep", payload={"seconds": 30})
        for _ in range(3)
    ]
    futures = [
        asyncio.run_coroutine_threadsafe(
            deliver(loop, sleep, delivery(r), AMQP_TRANSPORT), loop.loop
        )
        for r in runs
    ]

    async def all_started() -> bool:
        return all([(await stored(engine, r.id)).state is RunState.STARTED for r in runs])

    await until(all_started)
    assert loop.stop_all("shutdown") == 3
    settled = [await asyncio.wrap_future(future) for future in futures]
    assert settled == [Settlement("requeue")] * 3  # rejected back to the broker
    for run in runs:
        row = await stored(engine, run.id)
        assert (row.state, row.attempts) == (RunState.QUEUED, 1)  # to be taken over
    late = await insert_run(engine, tenant_id)
    assert settle(loop, spec(settings, "system.echo"), late) == Settlement("requeue")


async def test_a_crash_between_outcome_and_ack_runs_nothing_twice(
    loop: runtime.WorkerLoop,
    settings: Settings,
    broker: InMemoryBroker,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
) -> None:
    echo = spec(settings, "system.echo")
    run = await insert_run(engine, tenant_id)
    await broker.publish_many([RunMessage.of(run)])
    taken = await take(broker)
    outcome = loop.call(deliver(loop, echo, taken.delivery(), AMQP_TRANSPORT), 30)
    assert outcome == Settlement("ack")
    # The process died before its ack: the broker delivers the message again.
    assert broker.lose_connection() == 1
    again = await take(broker)
    assert again.redelivered
    assert work(loop, settings, broker, again) == Settlement("ignore")
    row = await stored(engine, run.id)
    assert (row.state, row.attempts) == (RunState.SUCCEEDED, 1)
    assert broker.take("default") is None


async def test_a_run_whose_worker_died_is_taken_over_until_its_delivery_limit(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    echo = spec(settings, "system.echo")
    died_once = await insert_run(engine, tenant_id, state=RunState.STARTED, attempts=1)
    assert settle(loop, echo, died_once, redelivered=True) == Settlement("ack")
    row = await stored(engine, died_once.id)
    assert (row.state, row.attempts) == (RunState.SUCCEEDED, 2)

    died_twice = await insert_run(
        engine, tenant_id, state=RunState.STARTED, attempts=DELIVERY_LIMIT
    )
    assert settle(loop, echo, died_twice, redelivered=True) == Settlement("ack")
    assert (await stored(engine, died_twice.id)).state is RunState.DEAD_LETTERED
    async with engine.connect() as connection:
        reason = await connection.scalar(
            select(DeadLetter.reason).where(DeadLetter.run_id == died_twice.id)
        )
    assert reason == "delivery_limit"


async def test_a_bookkeeping_failure_is_handed_back_never_the_runs_failure(
    loop: runtime.WorkerLoop,
    settings: Settings,
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        async def claim(self, *_: Any) -> None:
            raise RuntimeError("the ledger's write failed")

        async def finish(self, *_: Any) -> None:
            raise RuntimeError("the ledger's write failed")

    monkeypatch.setattr(execution, "_writes", lambda _: Broken())
    run = await insert_run(engine, tenant_id)
    settled = settle(loop, spec(settings, "system.echo"), run)
    assert (settled.kind, settled.delay, settled.dependency) == ("hand_back", 2, None)
    assert (await stored(engine, run.id)).state is RunState.QUEUED  # not failed
    settled = settle(loop, spec(settings, "system.echo"), run, returned=3)
    assert (settled.kind, settled.delay) == ("hand_back", 16)  # doubling
    given_up = settle(loop, spec(settings, "system.echo"), run, returned=20)
    assert given_up.kind == "fail"  # a bug does not loop for ever


async def test_a_foreign_message_is_archived_and_ignored(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    foreign = Delivery("m-1", ("not a run id",), {}, None, None, False, 0)
    echo = spec(settings, "system.echo")
    assert loop.call(deliver(loop, echo, foreign, AMQP_TRANSPORT), 30) == Settlement("ignore")
    async with engine.connect() as connection:
        reasons = list(
            await connection.scalars(select(DeadLetter.reason).where(DeadLetter.run_id.is_(None)))
        )
    assert reasons == ["foreign_message"]


async def test_a_handler_that_blocks_the_loop_past_its_limit_ends_the_process(
    loop: runtime.WorkerLoop, settings: Settings, engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    exits: list[int] = []
    loop.on_fatal = exits.append

    async def blocking(payload: Any, ctx: Any) -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - the point: it blocks the loop

    blocker = spec(settings, "system.echo", handler=blocking, time_limit=0.3)
    run = await insert_run(engine, tenant_id)
    settle(loop, blocker, run)

    async def ended() -> bool:  # the watchdog's thread ends it once it recorded the failure
        return bool(exits)

    await until(ended)
    assert set(exits) == {runtime.EXIT_LOOP_BLOCKED}
    row = await stored(engine, run.id)
    assert (row.state, row.error_type) == (RunState.FAILED, "TimeLimitExceededError")
