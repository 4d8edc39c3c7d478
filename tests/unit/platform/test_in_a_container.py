"""What the image relies on, without a container: unique node names, temporary files under
VAR_DIR on a read-only root, Celery's shutdown lines as JSON."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from celery.apps import worker as celery_worker

from switchyard.logging import signal_safe_line
from switchyard.platform.worker import json_shutdown_lines
from switchyard.roles import cli
from switchyard.roles.worker import node_name
from switchyard.settings import Settings


def test_node_names_differ_between_processes_with_the_same_pid_and_host() -> None:
    """Two containers on the host network share the hostname and number their processes alike."""
    names = {node_name(0) for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"worker0-[0-9a-f]{8}@.+", name) for name in names)


def test_temporary_files_go_under_var_dir_when_no_temporary_directory_is_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", read_only)
    monkeypatch.setattr(tempfile, "tempdir", None)
    # Set, then removed: undoing the two takes away the TMPDIR the code under test sets
    # (a delenv of a variable not set records nothing, and it would leak into later tests).
    monkeypatch.setenv("TMPDIR", "unset-after-the-test")
    monkeypatch.delenv("TMPDIR")
    cli._temporary_files_under_var_dir(Settings(_env_file=None, var_dir=tmp_path))
    assert os.environ["TMPDIR"] == str(tmp_path / "tmp")
    assert (tmp_path / "tmp").is_dir()


def test_a_writable_temporary_directory_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set, then removed: undoing the two takes away the TMPDIR the code under test sets
    # (a delenv of a variable not set records nothing, and it would leak into later tests).
    monkeypatch.setenv("TMPDIR", "unset-after-the-test")
    monkeypatch.delenv("TMPDIR")
    cli._temporary_files_under_var_dir(Settings(_env_file=None, var_dir=tmp_path))
    assert "TMPDIR" not in os.environ
    assert not (tmp_path / "tmp").exists()


def test_celerys_shutdown_message_is_a_json_line_on_stderr(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celery_worker, "safe_say", celery_worker.safe_say)
    json_shutdown_lines("worker")
    celery_worker.safe_say("worker: Warm shutdown (MainProcess)", None)
    out, err = capfd.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    record = json.loads(line)
    assert record["message"] == "worker: Warm shutdown (MainProcess)"
    assert record["logger"] == "celery.apps.worker"
    assert record["service_type"] == "worker"
    assert record["level"] == "INFO"


def test_a_signal_safe_line_has_the_fields_of_every_other_line() -> None:
    record = json.loads(signal_safe_line("x", 'say "hi"\n', "beat", level="WARNING"))
    assert set(record) == {"time", "level", "logger", "message", "service_type"}
    assert record["message"] == 'say "hi"\n'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["time"])
