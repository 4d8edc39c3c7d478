"""What every embedded server shares: a free port, and dying with its parent."""

from __future__ import annotations

import ctypes
import signal
import socket
import time

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
