"""Time from `switchyard run standalone` to a healthy /health: first start vs restart.

Baseline, in the same run: starting the embedded PostgreSQL alone on the same data dir.
Usage: uv run python bench/standalone_startup.py [ROUNDS]
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from switchyard.embedded.postgres import EmbeddedPostgres

SWITCHYARD = str(Path(sys.executable).with_name("switchyard"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_to_healthy(workdir: Path) -> float:
    port = free_port()
    env = {**os.environ, "API_PORT": str(port)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [SWITCHYARD, "run", "standalone"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"standalone exited with {process.returncode}")
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def postgres_alone(root: Path) -> float:
    started = time.perf_counter()
    with EmbeddedPostgres(root):
        return time.perf_counter() - started


def main(rounds: int) -> None:
    cold, warm, baseline = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as directory:
            workdir = Path(directory)
            cold.append(time_to_healthy(workdir))
            warm.append(time_to_healthy(workdir))
            baseline.append(postgres_alone(workdir / "var"))
    median = statistics.median
    print(f"rounds                              {rounds}")
    print(f"first start to healthy (initdb)     {median(cold):.3f} s")
    print(f"restart to healthy (reused data)    {median(warm):.3f} s")
    print(f"baseline: embedded PostgreSQL alone {median(baseline):.3f} s")
    print(f"restart / first start               {median(warm) / median(cold):.2f}")
    print(f"restart / baseline                  {median(warm) / median(baseline):.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
