"""Where a process's CPU goes, by py-spy: samples attributed to the library whose code was on
the CPU (the innermost frame), as shares of the samples taken while it worked.

Used by bench/e2e_throughput.py (--profile) to show where a run's CPU goes in the worker.
Samples of threads that only wait (a thread pool's idle workers, a selector) are left out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The library of a frame's file (py-spy names files from their package: "sqlalchemy/...",
# or by bare name for the standard library's top level), first match wins.
LIBRARIES = (
    ("sqlalchemy/", "SQLAlchemy"),
    ("asyncpg/", "asyncpg"),
    ("redis/", "redis-py"),
    ("celery/", "Celery"),
    ("kombu/", "kombu"),
    ("amqp/", "py-amqp"),
    ("billiard/", "billiard"),
    ("pydantic", "pydantic"),
    ("prometheus_client/", "prometheus_client"),
    ("switchyard/", "Switchyard"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio (event loop)"),
    ("concurrent/", "threads (hand-over)"),
    ("threading.py", "threads (hand-over)"),
)
IDLE = (
    "selectors.py",
    "_epoll.poll (kombu/utils/eventio.py",
    "queue.py",
    "concurrent/futures/thread.py:81",
    "synchronize.py",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (uv sync installs it with the dev tools)")
    return found


@contextmanager
def recording(pid: int, output: Path, rate: int = 500) -> Iterator[None]:
    """py-spy sampling `pid` (and its children) into `output` (raw, folded stacks) until the
    block ends."""
    spy = subprocess.Popen(
        [
            *(py_spy(), "record", "-p", str(pid), "--subprocesses", "-r", str(rate)),
            # Without pausing the process at each sample: a worker has a thread per run in
            # flight, and stopping them all 250 times a second would be what is measured.
            *("-f", "raw", "-o", str(output), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        os.kill(spy.pid, signal.SIGINT)  # py-spy writes its file when interrupted
        spy.wait(60)


def library(frame: str) -> str:
    """The library of a py-spy frame, `function (path/file.py:line)`."""
    where = frame.rpartition("(")[2]
    for fragment, name in LIBRARIES:
        if where.startswith(fragment) or f"/{fragment}" in where:
            return name
    return "other (stdlib, interpreter)"


def shares(folded: Path) -> dict[str, float]:
    """Each library's share of the working samples of a raw py-spy file."""
    counts: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        innermost = stack.rsplit(";", 1)[-1]
        if any(marker in innermost for marker in IDLE):
            continue
        counts[library(innermost)] += int(number)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.most_common()}
