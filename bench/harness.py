"""What the benchmarks share: processes to measure, a load generator, figures and tables.

Every benchmark measures Switchyard and its baseline in the same run, alternating rounds,
and prints medians, spread and the ratio to the baseline: on a shared, noisy machine the
absolute figures drift, the ratios hold better."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
SWITCHYARD = str(Path(sys.executable).with_name("switchyard"))
DEFAULT_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Figures:
    """Median and spread of repeated measurements."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the distance between the smallest and largest sample, relative to the median."""
        if len(self.samples) < 2 or self.median == 0:
            return 0.0
        return (max(self.samples) - min(self.samples)) / 2 / self.median

    def __str__(self) -> str:
        return f"{self.median:,.2f} ±{self.spread:.0%}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header)), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def print_targets(rows: Iterable[Sequence[object]]) -> None:
    """The targets table: rows of (target, measured, whether it is met)."""
    print_table(
        "Targets",
        ["target", "measured", "verdict"],
        [[target, measured, verdict(bool(met))] for target, measured, met in rows],
    )


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Seconds until `url` answers 200 (from now); raises if the process dies first."""
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def role_env(**values: str) -> dict[str, str]:
    """The environment of a measured role. Without PYTHONDONTWRITEBYTECODE (set on some CI
    machines): the image ships compiled bytecode (UV_COMPILE_BYTECODE), so a role measured
    here must not recompile every module at each start either."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("SERVICE_TYPE", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(
        {
            "ENVIRONMENT": "test",
            "JWT_SECRET": "bench-signing-secret-" + "x" * 48,
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_API": "100000000/minute",
            "RATE_LIMIT_AUTH": "100000000/minute",
            "RATE_LIMIT_TASK_RUNS": "100000000/minute",
            "RATE_LIMIT_UPLOADS": "100000000/minute",
            "WORKER_METRICS_PORT": "0",
            "BEAT_METRICS_PORT": "0",
            # Gateways and workers need a Chroma server; benchmarks that search set their own.
            "CHROMA_HOST": "127.0.0.1",
            "CHROMA_PORT": "9",
        }
    )
    env.update(values)
    return env


@contextmanager
def process(
    command: Sequence[str], env: dict[str, str], cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the benchmark's length, stopped with SIGTERM (SIGKILL after 30 s)."""
    child = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


@contextmanager
def scratch_database(base_url: str = DEFAULT_DATABASE) -> Iterator[str]:
    """A fresh database for one benchmark (dropped after), migrated to head."""
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(os.environ.get("BENCH_DATABASE_URL", base_url))
    name = f"switchyard_bench_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    database = url.set(database=name).render_as_string(hide_password=False)
    try:
        subprocess.run(
            [SWITCHYARD, "run", "migrate"],
            env=role_env(DATABASE_URL=database),
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield database
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def load(
    url: str,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> Load:
    """Requests per second and latency percentiles under `connections` concurrent keep-alive
    clients, from another process: wrk when installed (Debian's `wrk`), else a small asyncio
    client of ours (`python -m bench.loadgen`; also with BENCH_LOADGEN=python), which is
    slower: compare ratios only within one generator."""
    header_args = [
        arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")
    ]
    wrk = shutil.which("wrk") if os.environ.get("BENCH_LOADGEN") != "python" else None
    if wrk:
        duration = f"-d{max(1, round(seconds))}s"
        script: list[str] = []
        if body is not None:  # a POST of `body`, through wrk's Lua hook
            lua = Path(tempfile.mkdtemp()) / "post.lua"
            lua.write_text(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n')
            script = ["-s", str(lua)]
        output = subprocess.run(
            [wrk, "-t1", f"-c{connections}", duration, "--latency", *script, *header_args, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
        non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
        if non_2xx:
            raise RuntimeError(f"{url}: {non_2xx.group(1)} answers were not 2xx")
        return Load(rps, p50, p99)
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            str(seconds),
            str(connections),
            *header_args,
            *(["--body", body] if body is not None else []),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    rps, p50, p99 = map(float, output.split())
    return Load(rps, p50, p99)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def scratch_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of its own (rabbitmqctl), deleted after; the broker of BENCH_BROKER_URL
    instead when that is set."""
    configured = os.environ.get("BENCH_BROKER_URL")
    if configured:
        yield configured
        return
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    vhost = f"switchyard-bench-{secrets.token_hex(4)}"

    def call(*args: str) -> None:
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)

    call("add_vhost", vhost)
    try:
        call("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        call("delete_vhost", vhost)


def _service_of(process: psutil.Process) -> str | None:
    name = process.info["name"] or ""
    if name.startswith("postgres"):
        return "postgres"
    if name.startswith("redis"):
        return "redis"
    if name.startswith("beam"):
        return "rabbitmq"
    command = " ".join(process.info["cmdline"] or ())
    if "worker" in command and ("switchyard" in command or "celery" in command):
        parent = process.parent()
        parent_command = " ".join(parent.cmdline()) if parent is not None else ""
        return "pool" if parent_command == command else "worker"
    return None


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each local service and by the workers
    ("worker": main processes, "pool": their children; the processes alive now): subtract
    two readings for what a run cost."""
    used: dict[str, float] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            service = _service_of(process)
        except psutil.Error:  # gone meanwhile
            continue
        times = process.info["cpu_times"]
        if service is not None and times is not None:
            used[service] = used.get(service, 0.0) + times.user + times.system
    return used


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
