"""One event loop and one Services container per worker process; every run a coroutine on it.

Celery's consumer hands each delivery to Switchyard's pool (platform.pool), which starts it
as a coroutine on this loop (platform.delivery); `WorkerLoop.run` runs its attempt as a flight
with its limits. The loop's thread owns every client (database pool, Redis, HTTP); no thread
waits for a run.

Limits are the loop's: the soft limit is `asyncio.timeout` around the handler (in
`execution`); at the hard limit the run's task is cancelled, and a run that ignores the
cancellation is abandoned (failed, its slot freed). A handler that blocks the loop is seen by
a watchdog thread: it logs the stall with the run that caused it, and when that run is past
its hard limit it fails the run on a connection of its own and ends the process (exit 70),
which the worker's supervisor replaces."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from switchyard.db.models import RunState, TaskRun
from switchyard.logging import RunLogContext, run_log_context
from switchyard.platform import workers
from switchyard.platform.dead_letters import DeadLetterRecord, store
from switchyard.platform.execution import Outcome, close_writes, hand_back, record_outcome
from switchyard.platform.metrics import (
    LOOP_LAG,
    LOOP_STALLS,
    RUNS_ABANDONED,
    RUNS_IN_FLIGHT,
    SLOTS_FREE,
)
from switchyard.platform.registry import TaskSpec
from switchyard.platform.runs import admission, ledger
from switchyard.services.container import Admission, Services
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
Stop = Literal["time_limit", "cancelled", "shutdown"]

TICK_SECONDS = 0.05
WATCH_SECONDS = 0.1
# A cancelled run has this long to unwind before it is abandoned.
ABANDON_AFTER_SECONDS = 2.0
# The watchdog's own connection, when it fails a run that blocks the loop.
FATAL_WRITE_SECONDS = 10.0
EXIT_LOOP_BLOCKED = 70
# How often each worker process gives out slots no admission followed (see admission.py).
ADMISSION_SWEEP_SECONDS = 2.0


class TimeLimitExceededError(Exception):
    """The run was still going at its hard time limit."""


@dataclass(eq=False)
class Flight:
    """One run in flight on the loop."""

    spec: TaskSpec[Any]
    run_id: uuid.UUID
    context: RunLogContext
    outcome: concurrent.futures.Future[Outcome] = field(default_factory=concurrent.futures.Future)
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    stop: Stop | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def conclude(self, outcome: Outcome | BaseException) -> None:
        if self.outcome.done():
            return
        if isinstance(outcome, BaseException):
            self.outcome.set_exception(outcome)
        else:
            self.outcome.set_result(outcome)


class WorkerLoop:
    """The process's loop, in a thread of its own, with the services built on it."""

    def __init__(
        self,
        settings: Settings,
        service_type: str,
        admission_of: Callable[[AsyncEngine], Admission] | None = None,
    ) -> None:
        self.settings = settings
        self.service_type = service_type
        self.admission_of = admission_of  # the process's admission, built with its services
        self.loop = asyncio.new_event_loop()
        self.flights: dict[asyncio.Task[None], Flight] = {}
        self.ticked = time.monotonic()
        self.lag = 0.0
        self.stall_since: float | None = None
        self.stopping = False
        self.on_fatal: Callable[[int], None] = os._exit
        self._services: Services | None = None
        self._background: list[asyncio.Task[None]] = []
        self._swept = False
        # Redelivered runs whose last process died in them run one at a time: one of them may
        # be what killed it, and the others must not die with it again.
        self.suspects = asyncio.Semaphore(1)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="switchyard-loop", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the worker loop is not started")
        return self._services

    def start(self) -> WorkerLoop:
        self._thread.start()
        self._services = self.call(self._open())
        self._watchdog.start()
        SLOTS_FREE.set(self.settings.worker_concurrency)
        return self

    async def _open(self) -> Services:
        services = Services.create(self.settings, self.service_type, admission=self.admission_of)
        self._background = [
            asyncio.create_task(self._tick(), name="loop-tick"),
            asyncio.create_task(self._poll_cancelled(services), name="cancel-poll"),
            asyncio.create_task(self._sweep_admissions(services), name="admission-sweep"),
            asyncio.create_task(self._report(services), name="worker-report"),
        ]
        return services

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait for it (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Start `coroutine` on the loop without waiting for it; it ends with the loop."""

        def start() -> None:
            self._background.append(self.loop.create_task(coroutine))

        self.loop.call_soon_threadsafe(start)

    def close(self, timeout: float = 10.0) -> None:
        if self._closing.is_set():
            return
        self._closing.set()

        async def shut() -> None:
            for task in self._background:
                task.cancel()
            if self._services is not None:
                await workers.forget(self._services.cache)
                if self._services.database is not None:
                    with contextlib.suppress(Exception):  # its report goes stale by itself
                        await admission.forget_slots(self._services.database, workers.me())
                await close_writes(self._services)
                await self._services.close()
            # What is left on the loop (an admission sweep a release started) ends with it.
            leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        try:
            self.call(shut(), timeout)
        except Exception:
            logger.exception("worker services did not close cleanly")
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)

    # Runs -----------------------------------------------------------------------------------

    async def run(
        self,
        spec: TaskSpec[Any],
        run_id: uuid.UUID,
        context: RunLogContext,
        attempt: Coroutine[Any, Any, Outcome],
    ) -> Outcome:
        """Run one attempt as a flight of its own (its limits, its cancellation), on the loop."""
        if self.stopping:  # the grace period is over: what has not started goes back
            attempt.close()
            return Outcome("requeue")
        flight = Flight(spec, run_id, context)
        self._begin(flight, attempt)
        return await asyncio.wrap_future(flight.outcome)

    def _begin(self, flight: Flight, attempt: Coroutine[Any, Any, Outcome]) -> None:
        flight.started = time.monotonic()
        task = self.loop.create_task(self._guard(flight, attempt), name=f"run-{flight.run_id}")
        flight.task = task
        self.flights[task] = flight
        flight.timers.append(
            self.loop.call_later(flight.spec.time_limit, self._stop, flight, "time_limit")
        )
        self._count()

    def _count(self) -> None:
        RUNS_IN_FLIGHT.set(len(self.flights))
        SLOTS_FREE.set(max(self.settings.worker_concurrency - len(self.flights), 0))

    async def _guard(self, flight: Flight, attempt: Coroutine[Any, Any, Outcome]) -> None:
        try:
            outcome = await attempt
        except asyncio.CancelledError:
            if flight.stop is None:
                flight.conclude(Outcome("requeue"))
                raise
            outcome = await self._stopped(flight)
        except BaseException as error:  # handed to the waiting thread, which decides
            flight.conclude(error)
            return
        finally:
            self._release(flight)
        flight.conclude(outcome)

    def _release(self, flight: Flight) -> None:
        for timer in flight.timers:
            timer.cancel()
        if flight.task is not None:
            self.flights.pop(flight.task, None)
        self._count()

    async def _stopped(self, flight: Flight) -> Outcome:
        """The outcome of a run stopped from outside its handler."""
        with run_log_context(flight.context):
            if flight.stop == "cancelled":
                logger.info("run cancelled while it ran", extra={"task": flight.spec.name})
                return Outcome("cancelled")
            if flight.stop == "shutdown":
                logger.warning(
                    "run handed back: the worker is stopping", extra={"task": flight.spec.name}
                )
                await hand_back(self.services, flight.run_id)
                return Outcome("requeue")
            error = TimeLimitExceededError(
                f"{flight.spec.name} ran past its time limit of {flight.spec.time_limit:g} s"
            )
            logger.error("run failed: time limit", extra={"task": flight.spec.name})
            elapsed = time.monotonic() - flight.started
            if await record_outcome(self.services, flight.spec, flight.run_id, error, elapsed):
                return Outcome("dead_letter", error=error)
            return Outcome("done")

    def _stop(self, flight: Flight, reason: Stop) -> None:
        """Cancel a run's task (on the loop); abandon it if it does not unwind in time."""
        if flight.task is None or flight.task.done() or flight.stop is not None:
            return
        flight.stop = reason
        flight.task.cancel(f"switchyard: {reason}")
        flight.timers.append(self.loop.call_later(ABANDON_AFTER_SECONDS, self._abandon, flight))

    def _abandon(self, flight: Flight) -> None:
        if flight.task is None or flight.task.done():
            return
        with run_log_context(flight.context):
            logger.error(
                "run ignores cancellation: abandoned, its slot freed",
                extra={"task": flight.spec.name, "reason": flight.stop},
            )
        RUNS_ABANDONED.labels(task=flight.spec.name, reason=str(flight.stop)).inc()
        self._release(flight)

        async def conclude() -> None:
            try:
                flight.conclude(await self._stopped(flight))
            except BaseException as error:
                flight.conclude(error)

        self._background.append(self.loop.create_task(conclude()))

    def stop_all(self, reason: Stop = "shutdown") -> int:
        """Cancel every run in flight (from any thread), and refuse new ones; how many there
        were."""
        self.stopping = True
        flights = list(self.flights.values())
        for flight in flights:
            self.loop.call_soon_threadsafe(self._stop, flight, reason)
        return len(flights)

    async def _sweep_admissions(self, services: Services) -> None:
        """Fair share's backstop in every worker process, with or without beat: slots freed
        with no admission after them (a process killed between a run's end and the next
        admission) go to the waiting runs within ADMISSION_SWEEP_SECONDS."""
        while True:
            # At once on start too: this process's slots are reported (`_report`), and runs
            # waiting for them need not wait for the first run to end.
            await asyncio.sleep(ADMISSION_SWEEP_SECONDS if self._swept else 0.2)
            self._swept = True
            dispatcher = services.admission
            if dispatcher is None or not dispatcher.enabled or self.stopping:
                continue
            try:
                await dispatcher.sweep()
            except Exception as exc:
                logger.warning("admission sweep failed", extra={"error": repr(exc)})

    async def _report(self, services: Services) -> None:
        """This process is online (platform.workers): its runs in flight, slots and loop lag;
        and its slots in the ledger's database, which fair share divides (runs.admission)."""
        settings = self.settings
        while True:
            await workers.report(
                services.cache,
                settings.worker_concurrency,
                len(self.flights),
                self.lag,
                list(settings.worker_queues),
            )
            if services.database is not None:
                try:
                    await admission.report_slots(
                        services.database, workers.me(), settings.worker_concurrency
                    )
                except Exception as error:  # the next report tries again
                    logger.warning("worker slots not reported", extra={"error": repr(error)})
            await asyncio.sleep(workers.REPORT_SECONDS)

    async def _poll_cancelled(self, services: Services) -> None:
        """Runs cancelled through the API while they run here stop within one poll."""
        while True:
            await asyncio.sleep(self.settings.worker_cancel_poll_seconds)
            held = {f.run_id: f for f in self.flights.values() if f.stop is None}
            if not held:
                continue
            try:
                async with services.database_engine.connect() as connection:
                    cancelled = await connection.scalars(
                        select(TaskRun.id).where(
                            TaskRun.id.in_(list(held)), TaskRun.state == RunState.CANCELLED
                        )
                    )
                    for run_id in cancelled:
                        self._stop(held[run_id], "cancelled")
            except Exception as error:  # the next poll tries again
                logger.debug("cancel poll failed", extra={"error": repr(error)})

    # The loop's health ------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            self.ticked = before
            await asyncio.sleep(TICK_SECONDS)
            self.lag = max(time.monotonic() - before - TICK_SECONDS, 0.0)

    def stalled_for(self) -> float:
        """How long the loop has not turned beyond its tick (0 when it keeps up)."""
        return max(time.monotonic() - self.ticked - TICK_SECONDS, 0.0)

    def _culprit(self) -> Flight | None:
        task = asyncio.current_task(self.loop)
        return self.flights.get(task) if task is not None else None

    def _watch(self) -> None:
        culprit: Flight | None = None
        while not self._closing.wait(WATCH_SECONDS):
            stalled = self.stalled_for()
            LOOP_LAG.set(max(stalled, self.lag))
            if stalled < self.settings.worker_stall_seconds:
                if self.stall_since is not None:
                    self._stall_over(culprit, time.monotonic() - self.stall_since)
                    self.stall_since, culprit = None, None
                continue
            if self.stall_since is None:
                self.stall_since = self.ticked
                culprit = self._culprit()
                task = culprit.spec.name if culprit else "unknown"
                LOOP_STALLS.labels(task=task).inc()
                self._log_stall("event loop stalled: a handler blocks it", culprit, stalled)
            if culprit is not None and time.monotonic() - culprit.started > culprit.spec.time_limit:
                self._fatal(culprit, stalled)

    def _log_stall(self, message: str, culprit: Flight | None, stalled: float) -> None:
        extra = {
            "stalled_seconds": round(stalled, 3),
            "task": culprit.spec.name if culprit else None,
        }
        if culprit is None:
            logger.warning(message, extra=extra)
            return
        with run_log_context(culprit.context):
            logger.warning(message, extra=extra)

    def _stall_over(self, culprit: Flight | None, stalled: float) -> None:
        self._log_stall("event loop stall over", culprit, stalled)

    def _fatal(self, culprit: Flight, stalled: float) -> None:
        with run_log_context(culprit.context):
            logger.critical(
                "run blocks the event loop past its time limit: failing it and replacing "
                "this worker process",
                extra={"task": culprit.spec.name, "stalled_seconds": round(stalled, 3)},
            )
        try:
            thread_loop = asyncio.new_event_loop()
            try:
                thread_loop.run_until_complete(
                    asyncio.wait_for(
                        fail_blocked(self.settings, culprit, self.services.workflow_steps),
                        FATAL_WRITE_SECONDS,
                    )
                )
            finally:
                thread_loop.close()
        except Exception:
            logger.exception("could not record the blocked run's failure")
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.on_fatal(EXIT_LOOP_BLOCKED)


async def fail_blocked(settings: Settings, flight: Flight, steps: ledger.StepHook | None) -> None:
    """Fail the run that blocks the loop and archive its dead letter, on a connection of the
    watchdog's own (the pool belongs to the blocked loop). Its message goes back to the broker
    when the process ends; the redelivery finds the run final and is skipped. A workflow's
    step run advances its workflow in the same transaction (runs it makes due are published
    by the outbox: this process is about to end)."""
    assert settings.database is not None
    engine = create_async_engine(settings.database, poolclass=NullPool)
    error = TimeLimitExceededError(
        f"{flight.spec.name} blocked the worker's event loop past its time limit of "
        f"{flight.spec.time_limit:g} s"
    )
    try:
        async with async_sessionmaker(engine).begin() as session:
            connection = await session.connection()
            elapsed_ms = round((time.monotonic() - flight.started) * 1000)
            outcome = ledger.Finish(
                flight.run_id, RunState.FAILED, error=error, elapsed_ms=elapsed_ms
            )
            changed = await ledger.finish_group(
                connection, [outcome], metered=settings.usage_metering
            )
            if steps is not None:
                await steps.advance(connection, list(changed.values()))
            await store(
                session,
                DeadLetterRecord(
                    run_id=flight.run_id,
                    task=flight.spec.name,
                    queue=flight.spec.queue,
                    reason="time_limit",
                    count=1,
                    dead_lettered_at=datetime.now(UTC),
                    headers={},
                    error=f"{type(error).__name__}: {error}",
                ),
            )
    finally:
        await engine.dispose()


_current: WorkerLoop | None = None


def start(
    settings: Settings,
    service_type: str,
    admission_of: Callable[[AsyncEngine], Admission] | None = None,
) -> WorkerLoop:
    """The process's loop, started once (by the worker's bootstep)."""
    global _current  # noqa: PLW0603 - one loop per process, by design
    if _current is None:
        _current = WorkerLoop(settings, service_type, admission_of).start()
    return _current


def current() -> WorkerLoop:
    if _current is None:
        raise RuntimeError("the worker loop is used before it was started")
    return _current


def close() -> None:
    global _current  # noqa: PLW0603
    if _current is not None:
        _current.close()
        _current = None
