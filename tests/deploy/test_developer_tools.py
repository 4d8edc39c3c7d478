"""The pre-commit hooks: ruff (check and format), mypy and a secret scanner, all runnable here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.processes import untraced_env

BIN = Path(sys.executable).parent


def uv_dir() -> str:
    """Where `uv` is: the hooks call it. `uv run` names itself in $UV."""
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is neither in $UV nor on PATH"
    return str(Path(found).parent)


def run(repo_root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=repo_root,
        env=untraced_env(  # other projects' tools: not ours to measure
            PATH=f"{BIN}:{uv_dir()}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            PRE_COMMIT_HOME=str(tmp_path / "pre-commit"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_pre_commit_config_is_valid_and_runs_the_house_tools(
    repo_root: Path, tmp_path: Path
) -> None:
    config = repo_root / ".pre-commit-config.yaml"
    checked = run(repo_root, tmp_path, "pre-commit", "validate-config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    hooks = {
        hook["id"]: hook["entry"]
        for repo in yaml.safe_load(config.read_text())["repos"]
        for hook in repo["hooks"]
    }
    assert "ruff check" in hooks["ruff-check"]
    assert "ruff format" in hooks["ruff-format"]
    assert "mypy" in hooks["mypy"]
    assert "detect-secrets-hook --baseline .secrets.baseline" in hooks["detect-secrets"]


def findings(baseline: Path) -> set[tuple[str, str]]:
    results = json.loads(baseline.read_text())["results"]
    return {(name, item["hashed_secret"]) for name, items in results.items() for item in items}


def test_the_repository_has_no_secret_beyond_its_baseline(repo_root: Path, tmp_path: Path) -> None:
    """What the hook checks on commit, for every tracked file (on a copy of the baseline)."""
    if not (repo_root / ".git").exists():
        pytest.fail("the secret scan reads the git checkout's tracked files")
    known = repo_root / ".secrets.baseline"
    rescanned = tmp_path / "baseline.json"
    shutil.copy(known, rescanned)
    scan = run(repo_root, tmp_path, "detect-secrets", "scan", "--baseline", str(rescanned))
    assert scan.returncode == 0, scan.stderr
    assert findings(rescanned) - findings(known) == set()


def test_a_new_secret_is_refused(repo_root: Path, tmp_path: Path) -> None:
    leaked = tmp_path / "settings_local.py"
    leaked.write_text(
        'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8x2mLk3Q"\n'
        "-----BEGIN RSA PRIVATE KEY-----\n"
    )
    baseline = tmp_path / "baseline.json"
    shutil.copy(repo_root / ".secrets.baseline", baseline)
    found = run(
        repo_root, tmp_path, "detect-secrets-hook", "--baseline", str(baseline), str(leaked)
    )
    assert found.returncode == 1
    assert "settings_local.py" in found.stdout
    assert "Private Key" in found.stdout


def make(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_without_a_target_lists_the_targets_and_starts_nothing(repo_root: Path) -> None:
    listed = make(repo_root)
    assert listed.returncode == 0, listed.stderr
    assert "make run" in listed.stdout
    assert "make test" in listed.stdout
    assert "switchyard run standalone" not in listed.stdout + listed.stderr


def test_the_readmes_day_to_day_commands_work_after_the_quick_start(repo_root: Path) -> None:
    """Each `make X ARGS='...'` line of the README's day-to-day block runs as written (the
    slow ones, lint and pytest, are checked to exist: CI runs them anyway)."""
    import re
    import shlex

    readme = (repo_root / "README.md").read_text()
    block = readme.split("Day-to-day, after either command", 1)[1].split("```sh", 1)[1]
    commands = [line.split("#")[0].strip() for line in block.split("```", 1)[0].splitlines()]
    commands = [command for command in commands if command]
    assert {shlex.split(command)[1] for command in commands} >= {"lint", "format", "pytest", "uv"}
    listed = make(repo_root).stdout
    for command in commands:
        target = shlex.split(command)[1]
        assert re.search(rf"^make {target}\b", listed, re.M), target
    help_text = make(repo_root, "switchyard", "ARGS=--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "healthcheck" in help_text.stdout
    version = make(repo_root, "uv", "ARGS=--version")
    assert version.returncode == 0
    assert version.stdout.strip().splitlines()[-1].startswith("uv ")
