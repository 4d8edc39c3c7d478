"""Switchyard's Celery pool: a delivery becomes a coroutine on the process's event loop.

Celery's consumer stays as it is (its message format, queues, prefetch, control channel and
events). What differs is the pool it hands a delivery to: `LoopPool.on_apply` starts the run
as a coroutine on the worker process's one loop (`platform.runtime`) and returns at once, so
no thread waits for a run in flight. When the coroutine is done, its result goes back to the
consumer's own thread (Celery's event loop watches a pipe of the pool's), where Celery's
tracer runs the task body with that result: the body only settles the message (ack, retry,
reject, ignore) as it did when it did the work itself, so acks, retries and dead letters go
through Celery exactly as before.

Hooks used, all public Celery API: the `worker_pool` setting (a pool class by path),
`BasePool.on_apply` / `on_stop` / `register_with_event_loop`, `apply_target`, and the
event loop's `add_reader`. The arguments Celery passes to `on_apply` are those of
`Request.execute_using_pool` (task name, id, request dict, body, content type, encoding);
`tests/unit/platform/test_pool.py` fails if Celery changes them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from celery.concurrency.base import BasePool, apply_target

logger = logging.getLogger(__name__)

# The settlement the coroutine arrived at, for the task body that Celery's tracer calls next
# in the consumer's thread (platform.worker).
SETTLED: contextvars.ContextVar[Any] = contextvars.ContextVar("switchyard_settled", default=None)

# Starts the coroutine of a delivery: (task name, request dict, body, content type, content
# encoding) -> the coroutine, or None for a task that is not a registered run.
Starter = Callable[[str, dict[str, Any], Any, str, str], Coroutine[Any, Any, Any] | None]


@dataclass(eq=False)
class Job:
    """One delivery in flight in the pool."""

    target: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    callback: Callable[..., Any] | None
    future: concurrent.futures.Future[Any]

    def wait(self, timeout: float | None = None) -> None:
        concurrent.futures.wait([self.future], timeout)

    def get(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)


class LoopPool(BasePool):  # type: ignore[misc]
    """One per worker process. `starter` and `loop` are set before Celery starts the worker
    (`attach`); a task that `starter` does not know runs in the consumer's thread at once."""

    body_can_be_buffer = False
    signal_safe = False

    starter: Starter | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop, starter: Starter) -> None:
        cls.loop, cls.starter = loop, starter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._done: deque[Job] = deque()
        self._jobs: set[Job] = set()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._hub: Any = None

    def register_with_event_loop(self, loop: Any) -> None:
        self._hub = loop
        loop.add_reader(self._wake_read, self._drain)

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> Any:
        args, kwargs = args or (), kwargs or {}
        coroutine = None
        if self._hub is not None and self.starter is not None and self.loop is not None:
            name, _, request, body, content_type, content_encoding = args
            try:
                coroutine = self.starter(name, request, body, content_type, content_encoding)
            except Exception:  # a body Celery's tracer cannot decode either: it says why
                logger.warning("delivery not started on the loop", exc_info=True)
        if coroutine is None:  # not a run, or no event loop to come back on: here, now
            return apply_target(target, args, kwargs, callback, accept_callback)
        if accept_callback is not None:
            accept_callback(os.getpid(), time.monotonic())
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        job = Job(target, args, kwargs, callback, future)
        self._jobs.add(job)
        job.future.add_done_callback(lambda _: self._finished(job))
        return job

    def _finished(self, job: Job) -> None:
        """On the run's loop: hand the job back to the consumer's thread."""
        self._done.append(job)
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups: one is enough
            os.write(self._wake_write, b"\0")

    def _drain(self) -> None:
        """In the consumer's thread: settle every job that is done."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        while self._done:
            self._settle(self._done.popleft())

    def _settle(self, job: Job) -> None:
        self._jobs.discard(job)
        try:
            settled = job.future.result()
        except BaseException as error:  # the coroutine failed: the body re-raises it
            settled = error
        token = SETTLED.set(settled)
        try:
            apply_target(job.target, job.args, job.kwargs, job.callback)
        finally:
            SETTLED.reset(token)

    def on_stop(self) -> None:
        """A warm shutdown: wait for the runs in flight (the worker's grace period hands them
        back when it is over), then settle them here: the consumer no longer turns."""
        pending = [job.future for job in list(self._jobs)]
        if pending:
            concurrent.futures.wait(pending)
        self._drain()
        if self._hub is not None:
            self._hub.remove_reader(self._wake_read)
        super().on_stop()

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info.update({"max-concurrency": self.limit, "in-flight": len(self._jobs)})
        return info

    @property
    def num_processes(self) -> int:
        return int(self.limit)
