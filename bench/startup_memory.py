"""Start-up time and idle memory of each role.

- gateway: process start to `/health/ready` 200 (schema migrated before; migrations excluded)
  and resident memory once idle. Target: <= 3 s, <= 150 MB.
- standalone: process start to `/health` 200 on a warm data directory (a restart; the first
  start is shown too). Target: <= 10 s.
- worker: resident memory of the supervisor and of its worker process once idle.
  Target: <= 200 MB per process.
Baseline, in the same run: the bare one-route Starlette app under uvicorn (start and memory).
Usage: uv run python -m bench.startup_memory [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from bench.gateway_overhead import uvicorn
from bench.harness import (
    DEFAULT_BROKER,
    DEFAULT_REDIS,
    SWITCHYARD,
    Figures,
    free_port,
    print_table,
    print_targets,
    process,
    ratio,
    role_env,
    rss_mb,
    scratch_database,
    wait_http,
)

IDLE_SECONDS = 3.0


def started(
    command: list[str], env: dict[str, str], url: str, cwd: Path | None = None
) -> tuple[float, float]:
    """(seconds to a 200 from `url`, resident MB of the process tree after idling)."""
    began = time.perf_counter()
    with process(command, env, **({"cwd": cwd} if cwd else {})) as child:
        wait_http(url, child, timeout=120)
        seconds = time.perf_counter() - began
        time.sleep(IDLE_SECONDS)
        memory = rss_mb(child.pid)
    return seconds, memory


def worker_memory(database: str, workdir: Path) -> tuple[float, float]:
    """(supervisor MB, largest worker process MB) of an idle worker role (one process)."""
    env = role_env(
        DATABASE_URL=database,
        REDIS_URL=DEFAULT_REDIS,
        CELERY_BROKER_URL=DEFAULT_BROKER,
        VAR_DIR=str(workdir),
        WORKER_QUEUES="default",
    )
    with process([SWITCHYARD, "run", "worker"], env, cwd=workdir) as worker:
        deadline = time.monotonic() + 120
        while not (workdir / "worker.heartbeat").exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
            time.sleep(0.1)
        time.sleep(IDLE_SECONDS)
        children = psutil.Process(worker.pid).children(recursive=True)
        largest = max((rss_mb(child.pid) for child in children), default=0.0)
        return rss_mb(worker.pid), largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    bare: list[tuple[float, float]] = []
    gateway: list[tuple[float, float]] = []
    standalone: list[tuple[float, float]] = []
    workers: list[tuple[float, float]] = []
    with scratch_database() as database, tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "standalone").mkdir()
        port = free_port()
        first = started(
            [SWITCHYARD, "run", "standalone"],
            role_env(API_PORT=str(port)),
            f"http://127.0.0.1:{port}/health",
            cwd=root / "standalone",
        )
        for index in range(args.rounds):
            port = free_port()
            bare.append(
                started(
                    uvicorn("bench.bare_app:app", port),
                    role_env(),
                    f"http://127.0.0.1:{port}/health/live",
                )
            )
            port = free_port()
            gateway.append(
                started(
                    [SWITCHYARD, "run", "api-gateway"],
                    role_env(
                        DATABASE_URL=database,
                        REDIS_URL=DEFAULT_REDIS,
                        API_HOST="127.0.0.1",
                        API_PORT=str(port),
                    ),
                    f"http://127.0.0.1:{port}/health/ready",
                )
            )
            port = free_port()
            standalone.append(
                started(
                    [SWITCHYARD, "run", "standalone"],
                    role_env(API_PORT=str(port)),
                    f"http://127.0.0.1:{port}/health",
                    cwd=root / "standalone",
                )
            )
            workdir = root / f"worker-{index}"
            workdir.mkdir()
            workers.append(worker_memory(database, workdir))

    def figures(samples: list[tuple[float, float]], index: int) -> Figures:
        return Figures(tuple(sample[index] for sample in samples))

    base_start, base_memory = figures(bare, 0).median, figures(bare, 1).median
    rows: list[list[object]] = [
        ["bare Starlette (baseline)", figures(bare, 0), figures(bare, 1), "1.00x", "1.00x"],
        [
            "gateway to /health/ready",
            figures(gateway, 0),
            figures(gateway, 1),
            ratio(figures(gateway, 0).median, base_start),
            ratio(figures(gateway, 1).median, base_memory),
        ],
        [
            "standalone restart to /health (all roles)",
            figures(standalone, 0),
            figures(standalone, 1),
            ratio(figures(standalone, 0).median, base_start),
            ratio(figures(standalone, 1).median, base_memory),
        ],
        ["standalone first start", f"{first[0]:.2f}", f"{first[1]:.1f}", "", ""],
        ["worker supervisor (idle)", "", figures(workers, 0), "", ""],
        ["worker process (idle, largest)", "", figures(workers, 1), "", ""],
    ]
    print_table(
        f"Start-up and memory: {args.rounds} rounds (median ±half-range); memory after "
        f"{IDLE_SECONDS:g} s idle, resident, the process alone",
        ["what", "seconds", "MB", "time vs bare", "memory vs bare"],
        rows,
    )
    gateway_start, gateway_memory = figures(gateway, 0).median, figures(gateway, 1).median
    restart = figures(standalone, 0).median
    worker_peak = max(figures(workers, 0).median, figures(workers, 1).median)
    print_targets(
        [
            ["gateway start <= 3 s", f"{gateway_start:.2f} s", gateway_start <= 3],
            ["standalone warm start <= 10 s", f"{restart:.2f} s", restart <= 10],
            ["gateway idle <= 150 MB", f"{gateway_memory:.0f} MB", gateway_memory <= 150],
            ["worker process idle <= 200 MB", f"{worker_peak:.0f} MB", worker_peak <= 200],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
