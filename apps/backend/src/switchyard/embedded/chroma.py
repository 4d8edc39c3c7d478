"""An embedded Chroma server (the `chroma` command of the chromadb package).

Standalone runs one so that the gateway and the worker share one vector store: Chroma's
in-process client is not safe to open from several processes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from switchyard.embedded.process import ChildServer


class EmbeddedChromaError(RuntimeError):
    pass


class EmbeddedChroma(ChildServer):
    name = "chroma"

    def __init__(self, root: Path, *, port: int = 0, startup_timeout: float = 60.0) -> None:
        super().__init__(root, port=port, startup_timeout=startup_timeout)
        self.data_dir = self.root / "chroma"

    def command(self) -> list[str]:
        executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
        return [
            executable,
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--path",
            str(self.data_dir),
        ]

    def error(self, message: str) -> Exception:
        return EmbeddedChromaError(message)
