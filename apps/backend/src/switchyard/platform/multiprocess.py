"""Prometheus multiprocess mode for the worker (its worker processes each write their own files).

`prometheus_client` picks how metric values are stored when each metric is created, so
`enable` runs before any module that defines metrics is imported: this module imports
nothing of prometheus_client at load time."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable() -> str:
    """Switch this process and its children to multiprocess mode; returns the directory.

    A directory from PROMETHEUS_MULTIPROC_DIR is emptied of a previous run's values (they
    would be summed in); otherwise a fresh temporary directory is used."""
    directory = os.environ.get(ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
    else:
        directory = tempfile.mkdtemp(prefix="switchyard-metrics-")
        os.environ[ENV] = directory
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory


def disable(directory: str) -> None:
    """Remove a directory `enable` created."""
    if os.path.basename(directory).startswith("switchyard-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)
