"""Group commit's mechanism: calls made at the same moment on one event loop answered by
one call with all their items (one statement, one transaction, one burst of publishes).

Each caller waits for its own answer; a failure of the shared call is every caller's
failure, as if each had made it alone. A group goes once `window_seconds` have passed since
its first item, or at once when it holds `most` items; groups run concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from switchyard import tracing

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """One per process and event loop, per kind of call."""

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        window_seconds: float,
        most: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.call = call  # answers the items in their order
        self.window = window_seconds
        self.most = most
        self.observe = observe  # told each group's size (a metric)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        # With TRACING: each caller's span, which the group's span links to.
        self.name = f"group {getattr(call, '__qualname__', 'call')}"
        self._callers: list[object] = []

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, answer))
        if tracing.enabled():
            self._callers.append(tracing.span_context())
        if len(self._pending) >= self.most:
            self._go()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._go)
        return await answer

    def _go(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group, self._pending = self._pending, []
        callers, self._callers = self._callers, []
        if group:
            task = asyncio.create_task(self._answer(group, callers))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(
        self, group: list[tuple[T, asyncio.Future[R]]], callers: list[object]
    ) -> None:
        if self.observe is not None:
            self.observe(len(group))
        try:
            if callers:  # TRACING on
                with tracing.group_span(self.name, callers):
                    answers = await self.call([item for item, _ in group])
            else:
                answers = await self.call([item for item, _ in group])
        except Exception as exc:
            for _, answer in group:
                if not answer.done():  # its caller may have gone (a client that left)
                    answer.set_exception(exc)
            return
        for (_, answer), value in zip(group, answers, strict=True):
            if not answer.done():
                answer.set_result(value)

    async def close(self) -> None:
        """Send what is pending and wait for the groups under way."""
        self._go()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
