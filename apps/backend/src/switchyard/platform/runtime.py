"""The async bridge: one event loop and one Services container per worker process.

Celery task bodies are synchronous; each process (each thread, for thread pools) runs its
coroutines on its own long-lived loop. A forked child never reuses its parent's loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from switchyard.services.container import Services
from switchyard.settings import Settings

T = TypeVar("T")


class WorkerRuntime:
    def __init__(self, settings: Settings, service_type: str) -> None:
        self.pid = os.getpid()
        self.runner = asyncio.Runner()
        self.services = Services.create(settings, service_type)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    def close(self) -> None:
        try:
            self.runner.run(self.services.close())
        finally:
            self.runner.close()


_local = threading.local()
_settings: tuple[Settings, str] | None = None
# A runtime inherited through fork is kept, never used or closed: its sockets are the parent's.
_inherited: list[WorkerRuntime] = []


def configure(settings: Settings, service_type: str) -> None:
    """Called once per process before any task runs."""
    global _settings  # noqa: PLW0603 - process-wide configuration, set at start-up
    _settings = (settings, service_type)


def current() -> WorkerRuntime:
    """This thread's runtime, created on first use (and anew after a fork)."""
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is None or runtime.pid != os.getpid():
        if _settings is None:
            raise RuntimeError("worker runtime used before configure()")
        if runtime is not None:
            _inherited.append(runtime)
        runtime = WorkerRuntime(*_settings)
        _local.runtime = runtime
    return runtime


def close_current() -> None:
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is not None and runtime.pid == os.getpid():
        _local.runtime = None
        runtime.close()
