"""CPU-heavy steps off the event loop: PDF and HTML text extraction, local embeddings.

They run in a pebble process pool (processes forked from a forkserver, so never from a
threaded worker): each job has a hard time limit and each pool process an address-space cap
(WORKER_CPU_MEMORY_MB). A job past its time, or cancelled with its run (a soft time limit, a
cancel, a shutdown), has its process killed and replaced; one past its memory gets a
MemoryError. The loop keeps serving every other run meanwhile. The pool starts on first use,
so a process that never needs it never forks one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import resource
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from switchyard.errors import SwitchyardError

logger = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024
# Jobs per pool process before it is replaced (bounds what a leak can pile up).
MAX_TASKS = 200


class CpuJobError(SwitchyardError):
    """A CPU job ended without a result: past its time or memory limit, or its process died."""

    status = 422
    code = "cpu_limit"
    title = "CPU limit"


def _limit(memory_bytes: int) -> None:
    """Runs first in each pool process."""
    # One thread per process: the pool's processes are the parallelism.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


class CpuPool:
    def __init__(self, processes: int, memory_mb: int) -> None:
        self.processes = processes
        self.memory_mb = memory_mb
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()

    def _started(self) -> ProcessPool:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(
                    max_workers=self.processes,
                    max_tasks=MAX_TASKS,
                    initializer=_limit,
                    initargs=(self.memory_mb * MiB,),
                    context=multiprocessing.get_context("forkserver"),
                )
            return self._pool

    async def run(self, function: Callable[..., T], *args: Any, limit: float, what: str) -> T:
        """`function(*args)` in a pool process, its process killed after `limit` seconds;
        `what` names the step in errors ("text extraction")."""
        future = self._started().schedule(function, args=args, timeout=limit)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # type: ignore[no-untyped-call] # kills the job's process: a cancelled run leaves nothing running
            raise
        except concurrent.futures.TimeoutError:
            raise CpuJobError(f"{what} ran past its limit of {limit:g} s") from None
        except MemoryError:
            raise CpuJobError(f"{what} ran past its memory limit of {self.memory_mb} MiB") from None
        except ProcessExpired as exc:
            raise CpuJobError(f"{what} ended its process (exit code {exc.exitcode})") from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]
            pool.join(timeout=5)
