"""Heartbeat files: a role writes one every few seconds; `switchyard healthcheck` reads it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def write_heartbeat(path: Path, content: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({**content, "at": time.time()}))
    temporary.replace(path)


def read_heartbeat(path: Path) -> tuple[dict[str, Any], float]:
    """The content and its age in seconds; OSError or ValueError when there is none."""
    content: dict[str, Any] = json.loads(path.read_text())
    return content, time.time() - float(content["at"])
