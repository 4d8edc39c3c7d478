"""The image is reproducible: two clean builds of one commit (no cache, `--timestamp` and
SOURCE_DATE_EPOCH from the commit's time, as docs/operations.md says) give one image id and
one manifest digest. Built with buildah (the container engine's builder) in the OCI format:
buildah 1.28 writes each build container's own id and host name into a Docker-format config.

Two builds take minutes: `make image-check` runs this after `make test` in .ci/run."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.servers import command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

BUILD_SECONDS = 900
# PEP 552: a .pyc's flags word; 0b01 = hash-based, unchecked (valid whatever its source's time).
UNCHECKED_HASH = 0b01


def commit_time(repo_root: Path) -> int:
    git = command("git", "git", "`git` is not on PATH")
    shown = subprocess.run(
        [git, "log", "-1", "--format=%ct"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    return int(shown.stdout.strip())


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [command("buildah", "buildah", "the container engine's builder is not installed"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture
def builds(image: str, repo_root: Path, tmp_path: Path) -> Iterator[list[tuple[str, str, Path]]]:
    """Two clean builds of the checkout: (tag, log, OCI layout) each; removed after. `image`
    (the suite's own build) makes sure the engine has the base images."""
    epoch = commit_time(repo_root)
    name = f"switchyard-reproducible-{uuid.uuid4().hex[:8]}"
    made: list[tuple[str, str, Path]] = []
    try:
        for side in ("first", "second"):
            tag = f"localhost/{name}:{side}"
            log = buildah(
                "bud",
                "--format=oci",
                "--layers",
                "--no-cache",
                "--pull-never",
                "--network=host",
                f"--timestamp={epoch}",
                f"--build-arg=SOURCE_DATE_EPOCH={epoch}",
                f"--tag={tag}",
                str(repo_root),
                timeout=BUILD_SECONDS,
            )
            layout = tmp_path / side
            buildah("push", "--quiet", tag, f"oci:{layout}")
            made.append((tag, log, layout))
        yield made
    finally:
        intermediate = {id_ for _, log, _ in made for id_ in re.findall(r"^--> (\w+)$", log, re.M)}
        for tag, _, _ in made:
            subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, check=False)
        for id_ in intermediate:  # this build's own layers' images, nobody else's
            subprocess.run(["buildah", "rmi", id_], capture_output=True, check=False)


def manifest_digest(layout: Path) -> str:
    [manifest] = json.loads((layout / "index.json").read_text())["manifests"]
    return str(manifest["digest"])


def test_two_clean_builds_of_one_commit_give_one_digest(
    builds: list[tuple[str, str, Path]], repo_root: Path
) -> None:
    (first, first_log, first_layout), (second, second_log, second_layout) = builds
    assert "Using cache" not in first_log + second_log  # both built every step
    ids = [
        buildah("inspect", "--type=image", "--format={{.FromImageID}}", tag).strip()
        for tag in (first, second)
    ]
    assert ids[0]
    assert ids[0] == ids[1]
    assert manifest_digest(first_layout) == manifest_digest(second_layout)

    # Every file's time is the commit's, and the modules are compiled so that this is fine.
    container = buildah("from", "--pull-never", first).strip()
    try:
        root = Path(buildah("mount", container).strip())
        epoch = commit_time(repo_root)
        site = next((root / "app/.venv/lib").glob("python3*/site-packages"))
        for module in ("switchyard/__init__.py", "sqlalchemy/__init__.py", "fastapi/__init__.py"):
            source = site / module
            assert int(source.stat().st_mtime) == epoch, module
            [compiled] = (source.parent / "__pycache__").glob(f"{source.stem}.cpython-3*.pyc")
            flags = struct.unpack("<I", compiled.read_bytes()[4:8])[0]
            assert flags == UNCHECKED_HASH, (module, flags)
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
