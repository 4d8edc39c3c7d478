"""The host's own limits as health checks: the free space where the role keeps its data, and the
memory it uses against the limit it runs under.

In a container the limit that kills a role is its cgroup's (`docker run --memory`, a pod's
`resources.limits.memory`): the check compares the cgroup's use with it, as the OOM killer
does. Without a cgroup limit, it compares this process's resident memory with the machine's."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit number.
NO_LIMIT_V1 = 2**62


class ResourceLowError(Exception):
    """A host resource past its threshold; the message gives the figures."""


@dataclass(frozen=True)
class MemoryUse:
    used: int
    limit: int
    source: str  # what was measured against what

    @property
    def percent(self) -> float:
        return self.used * 100 / self.limit if self.limit else 0.0


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def memory_use(cgroup: Path = CGROUP) -> MemoryUse:
    """The cgroup's use and limit when it has one (v2, then v1); else this process's RSS
    against the machine's RAM."""
    limit = _read_int(cgroup / "memory.max")  # "max" (no limit) reads as None
    used = _read_int(cgroup / "memory.current")
    if limit is not None and used is not None:
        return MemoryUse(used, limit, "the container's memory (cgroup v2) against its limit")
    limit = _read_int(cgroup / "memory" / "memory.limit_in_bytes")
    used = _read_int(cgroup / "memory" / "memory.usage_in_bytes")
    if limit is not None and used is not None and limit < NO_LIMIT_V1:
        return MemoryUse(used, limit, "the container's memory (cgroup v1) against its limit")
    rss = psutil.Process().memory_info().rss
    return MemoryUse(rss, psutil.virtual_memory().total, "this process's RSS against the RAM")


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (VAR_DIR may not be made yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(path: Path, min_free_percent: float) -> str:
    """Raise ResourceLowError when the file system holding `path` is fuller than allowed."""
    where = existing(path)
    usage = shutil.disk_usage(where)
    free = usage.free * 100 / usage.total if usage.total else 0.0
    figures = f"{_size(usage.free)} free of {_size(usage.total)} ({free:.1f} %) at {where}"
    if free < min_free_percent:
        raise ResourceLowError(
            f"{figures}: below HEALTH_DISK_MIN_FREE_PERCENT={min_free_percent:g}"
        )
    return figures


def check_memory(max_percent: float, cgroup: Path = CGROUP) -> str:
    """Raise ResourceLowError when the role uses more of its memory limit than allowed."""
    use = memory_use(cgroup)
    figures = f"{use.source}: {_size(use.used)} of {_size(use.limit)} ({use.percent:.1f} %)"
    if use.percent > max_percent:
        raise ResourceLowError(f"{figures}: above HEALTH_MEMORY_MAX_PERCENT={max_percent:g}")
    return figures


async def probe_disk(path: Path, min_free_percent: float) -> None:
    await asyncio.to_thread(check_disk, path, min_free_percent)


async def probe_memory(max_percent: float, cgroup: Path = CGROUP) -> None:
    await asyncio.to_thread(check_memory, max_percent, cgroup)
