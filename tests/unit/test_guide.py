"""docs/adding-a-domain.md and its example (tests/example_domain/notes) agree: every code block
of the guide is in the file the guide names above it, every file of the example is shown, and
the example has the domain shape (read from the files: its model is never imported here, so
this process's metadata stays the product's)."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
GUIDE = REPOSITORY / "docs" / "adding-a-domain.md"
EXAMPLE = REPOSITORY / "tests" / "example_domain" / "notes"
BLOCK = re.compile(r"^`(tests/example_domain/notes/[\w/.]+)`\n\n```python\n(.*?)\n```", re.M | re.S)


def test_every_code_block_of_the_guide_is_in_the_file_it_names() -> None:
    blocks = BLOCK.findall(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    missing = [path for path, code in blocks if code not in (REPOSITORY / path).read_text()]
    assert missing == []


def test_the_guide_shows_every_file_of_the_example() -> None:
    shown = {path for path, _ in BLOCK.findall(GUIDE.read_text(encoding="utf-8"))}
    files = {
        str(path.relative_to(REPOSITORY))
        for path in EXAMPLE.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert files == shown


def test_the_example_has_the_domain_shape() -> None:
    names = {path.name for path in EXAMPLE.glob("*.py")}
    assert {"schemas.py", "repository.py", "service.py", "endpoints.py", "tasks.py"} <= names
    assert list((EXAMPLE / "migrations" / "versions").glob("*.py")) != []


def test_the_readme_links_the_guide() -> None:
    assert "docs/adding-a-domain.md" in (REPOSITORY / "README.md").read_text(encoding="utf-8")
