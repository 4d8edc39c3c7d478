"""Switchyard's Celery pool, in process: a delivery is a coroutine on a loop, on_apply never
waits for it, and its result is settled in the consumer's thread when the pipe wakes it.
Also what the pool relies on in Celery: the arguments `Request.execute_using_pool` hands it."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.concurrency.base import BasePool
from celery.contrib.testing.mocks import TaskMessage
from celery.worker.request import Request

from switchyard.platform.pool import SETTLED, LoopPool


class Hub:
    """Celery's event loop, as far as the pool uses it: the readers it asks to be told of."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def turn(self, within: float = 5.0) -> None:
        """What the consumer's loop does when a reader's fd is readable: call it."""
        ((fd, callback),) = self.readers.items()
        deadline = time.monotonic() + within
        while True:
            if _readable(fd):
                callback()
                return
            assert time.monotonic() < deadline, "the pool never woke the consumer's loop"
            time.sleep(0.005)


def _readable(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_celery_hands_a_delivery_to_the_pool_as_the_pool_expects() -> None:
    """If Celery changes what `execute_using_pool` passes, the pool must change with it."""
    app = Celery("pool-contract", set_as_current=False)

    @app.task(name="contract.echo", bind=True)  # type: ignore[untyped-decorator]
    def echo(task: Any, run_id: str) -> None: ...

    message = TaskMessage("contract.echo", args=["a-run-id"], switchyard_tenant="t-1")
    request = Request(message, app=app, task=app.tasks["contract.echo"])
    applied: dict[str, Any] = {}

    class Recording(BasePool):  # type: ignore[misc]
        def on_apply(
            self, target: Any, args: Any = None, kwargs: Any = None, **options: Any
        ) -> None:
            applied.update(target=target, args=args, options=options)

    request.execute_using_pool(Recording(limit=1, app=app))

    name, task_id, request_dict, body, content_type, content_encoding = applied["args"]
    assert (name, task_id) == ("contract.echo", message.headers["id"])
    assert request_dict["switchyard_tenant"] == "t-1"  # headers reach the request dict
    assert "delivery_info" in request_dict
    assert (body, content_type, content_encoding) == (
        message.body,
        message.content_type,
        message.content_encoding,
    )
    for callback in ("accept_callback", "callback", "error_callback"):
        assert callable(applied["options"][callback])


def make_pool(loop: asyncio.AbstractEventLoop, starter: Callable[..., Any]) -> tuple[LoopPool, Hub]:
    pool = LoopPool(limit=10)
    pool.loop, pool.starter = loop, starter
    hub = Hub()
    pool.register_with_event_loop(hub)
    return pool, hub


ARGS = ("tasks.run", "message-1", {"id": "message-1"}, b"[]", "application/json", "utf-8")


def test_a_delivery_runs_on_the_loop_and_settles_in_the_consumers_thread(
    loop: asyncio.AbstractEventLoop,
) -> None:
    release = asyncio.Event()
    seen: dict[str, Any] = {}

    async def delivery() -> str:
        seen["loop_thread"] = threading.get_ident()
        await release.wait()
        return "settled: ack"

    def starter(name: str, request: dict[str, Any], *_: Any) -> Any:
        return delivery() if name == "tasks.run" else None

    def target(*args: Any) -> str:  # Celery's tracer, calling the task body
        seen["target_thread"] = threading.get_ident()
        seen["settled"] = SETTLED.get()
        return "traced"

    pool, hub = make_pool(loop, starter)
    accepted: list[int] = []
    results: list[Any] = []
    started = time.monotonic()
    job = pool.on_apply(
        target,
        ARGS,
        {},
        callback=results.append,
        accept_callback=lambda pid, _: accepted.append(pid),
    )
    assert time.monotonic() - started < 0.5  # on_apply did not wait for the run
    assert accepted == [os.getpid()]
    assert results == []  # still in flight
    assert pool._get_info()["in-flight"] == 1

    loop.call_soon_threadsafe(release.set)
    hub.turn()

    assert results == ["traced"]  # Celery's callback got what the tracer returned
    assert seen["settled"] == "settled: ack"  # the body saw the coroutine's settlement
    assert seen["target_thread"] == threading.get_ident()  # in the consumer's thread
    assert seen["loop_thread"] != threading.get_ident()
    assert SETTLED.get() is None  # and only for that call
    job.wait(1)


def test_hundreds_in_flight_hold_no_thread(loop: asyncio.AbstractEventLoop) -> None:
    release = asyncio.Event()

    async def delivery() -> str:
        await release.wait()
        return "ack"

    pool, hub = make_pool(loop, lambda *_: delivery())
    threads = threading.active_count()
    settled: list[Any] = []
    for _ in range(500):
        pool.on_apply(lambda *_: SETTLED.get(), ARGS, {}, callback=settled.append)
    assert threading.active_count() == threads
    loop.call_soon_threadsafe(release.set)
    deadline = time.monotonic() + 5
    while len(settled) < 500:
        hub.turn()
        assert time.monotonic() < deadline
    assert settled == ["ack"] * 500


def test_a_failed_coroutine_reaches_the_body_as_its_error(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def delivery() -> str:
        raise RuntimeError("the ledger is gone")

    pool, hub = make_pool(loop, lambda *_: delivery())
    seen: list[Any] = []
    pool.on_apply(lambda *_: seen.append(SETTLED.get()), ARGS, {}, callback=lambda _: None)
    hub.turn()
    assert isinstance(seen[0], RuntimeError)


def test_a_task_that_is_not_a_run_is_traced_at_once_here(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pool, _ = make_pool(loop, lambda *_: None)
    results: list[Any] = []
    pool.on_apply(lambda *_: threading.get_ident(), ARGS, {}, callback=results.append)
    assert results == [threading.get_ident()]


def test_stopping_waits_for_the_runs_in_flight_and_settles_them(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def delivery() -> str:
        await asyncio.sleep(0.2)
        return "requeue"

    pool, hub = make_pool(loop, lambda *_: delivery())
    settled: list[Any] = []
    for _ in range(3):
        pool.on_apply(lambda *_: SETTLED.get(), ARGS, {}, callback=settled.append)
    pool.on_stop()  # the consumer's loop no longer turns: settled here
    assert settled == ["requeue"] * 3
    assert hub.readers == {}
