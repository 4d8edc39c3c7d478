from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.postgres",
    "tests.fixtures.messaging",
    "tests.fixtures.gateway",
    "tests.fixtures.processes",
    "tests.fixtures.tasks",
    "tests.fixtures.backing",
    "tests.fixtures.containers",
    "tests.fixtures.mail",
]

# A test that starts real processes shares two cores with the other test processes' (three
# with `make test`) and their role processes, each traced by coverage: in CI two such tests
# that take 21 and 30 s alone ran past 120 s and their pytest processes were ended. Their own
# waits bound them; this bound only catches a hang. In-process tests keep pyproject's 120 s.
PROCESS_TEST_TIMEOUT_SECONDS = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the modules that start processes (marked e2e) evenly among the others, each module
    kept whole (module fixtures are built once). pytest-xdist hands each test process a
    contiguous part of this order: in path order the first part held every process test and the
    others, done early, took them over at the end, so three ran at once and starved each other."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(PROCESS_TEST_TIMEOUT_SECONDS))
    heavy = [m for m in modules.values() if any(i.get_closest_marker("e2e") for i in m)]
    light = [m for m in modules.values() if not any(i.get_closest_marker("e2e") for i in m)]
    heavy_total = sum(len(m) for m in heavy) or 1
    light_total = sum(len(m) for m in light) or 1
    ordered: list[pytest.Item] = []
    heavy_done = light_done = 0
    while heavy or light:
        # The list that is furthest behind its share of the order goes next.
        if heavy and (not light or heavy_done / heavy_total <= light_done / light_total):
            module = heavy.pop(0)
            heavy_done += len(module)
        else:
            module = light.pop(0)
            light_done += len(module)
        ordered.extend(module)
    items[:] = ordered
