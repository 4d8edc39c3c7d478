"""What every embedded server shares: a free port, and dying with its parent."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Runs in a child before exec: `sig` arrives when the parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig)


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if port_answers(port):
            return True
        time.sleep(0.02)
    return False


class ChildServer:
    """A server binary run as a child of this process on 127.0.0.1, its data under `root`.

    It runs in its own session (a Ctrl-C of the terminal reaches only the parent, which stops
    it in order) and receives SIGTERM should the parent die."""

    name = "server"

    def __init__(self, root: Path, *, port: int = 0, startup_timeout: float = 30.0) -> None:
        self.root = root.absolute()
        self.log_file = self.root / f"{self.name}.log"
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def error(self, message: str) -> Exception:
        return RuntimeError(message)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - at start-up, before any thread
            )
        if not wait_for_port(self.port, time.monotonic() + self.startup_timeout):
            self.stop()
            raise self.error(f"embedded {self.name} did not start; see {self.log_file}")

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
