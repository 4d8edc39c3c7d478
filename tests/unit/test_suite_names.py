"""SWITCHYARD_TEST_PREFIX names what the suite creates on shared servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.processes import untraced_env

SHOW = "from tests.fixtures import names; print(names.unique(), names.database(), names.PREFIX)"


def names_under(prefix: str, repo_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=repo_root,
        env=untraced_env(SWITCHYARD_TEST_PREFIX=prefix),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_prefix_names_vhosts_namespaces_and_databases(repo_root: Path) -> None:
    shown = names_under("ci-b", repo_root)
    assert shown.returncode == 0, shown.stderr
    vhost, database, prefix = shown.stdout.split()
    assert vhost.startswith("ci-b-")
    assert database.startswith("ci_b_")
    assert prefix == "ci-b"


def test_a_prefix_that_cannot_name_a_database_is_refused(repo_root: Path) -> None:
    shown = names_under("Bad Prefix;", repo_root)
    assert shown.returncode != 0
    assert "SWITCHYARD_TEST_PREFIX='Bad Prefix;'" in shown.stderr
