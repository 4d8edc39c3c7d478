from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture(scope="module")
def compose(repo_root: Path) -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    loaded = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded
