"""The package's layers (docs/architecture.md, "Package layers"): imports only point down.

Read from the source, every import statement of every module (inside functions and
`TYPE_CHECKING` blocks too): a module may import its own layer or a lower one. Domains may use
each other's schemas, services, repositories and dependencies, never another domain's
`endpoints` or `tasks`, and the domains' imports of each other have no cycle. Every top-level
module belongs to a layer: a new one fails here until it is placed. No exceptions are listed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

import switchyard
from switchyard.domains import DOMAINS

PACKAGE = Path(switchyard.__file__).parent
DOMAIN_NAMES = frozenset(domain.name for domain in DOMAINS)
# Top to bottom; a name is a subpackage or a module directly under switchyard/.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("entry point", frozenset({"__main__"})),
    ("roles", frozenset({"roles"})),
    ("api", frozenset({"api"})),
    ("domain list", frozenset({"domains"})),
    ("domains", DOMAIN_NAMES),
    ("platform", frozenset({"platform"})),
    ("services", frozenset({"services", "embedded"})),
    ("db", frozenset({"db"})),
    ("base", frozenset({"__init__", "settings", "logging", "errors", "reporting", "tracing"})),
)
PRIVATE_TO_A_DOMAIN = frozenset({"endpoints", "tasks"})


def layer_of(module: str) -> int:
    """The index in LAYERS of `switchyard.<name>...`; KeyError when no layer holds it."""
    name = module.split(".")[1] if "." in module else "__init__"
    for index, (_, names) in enumerate(LAYERS):
        if name in names:
            return index
    raise KeyError(module)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from switchyard.x import y` may name the module switchyard.x.y
            yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def import_graph() -> Mapping[str, frozenset[str]]:
    """Every module of the package, and the switchyard modules it imports."""
    graph: dict[str, frozenset[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph[module] = frozenset(
            target for target in _imports(path, module) if target.split(".")[0] == "switchyard"
        )
    known = set(graph)
    return {
        module: frozenset(t for t in targets if t in known or t == "switchyard")
        for module, targets in graph.items()
    }


def _domain(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in DOMAIN_NAMES else None


def violations(graph: Mapping[str, frozenset[str]]) -> list[str]:
    """Every import that points up a layer or into another domain's endpoints or tasks."""
    found: list[str] = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) < layer_of(module):
                up = LAYERS[layer_of(target)][0]
                found.append(
                    f"{module} imports {target} ({up} is above {LAYERS[layer_of(module)][0]})"
                )
            source_domain, target_domain = _domain(module), _domain(target)
            if (
                source_domain is not None
                and target_domain is not None
                and source_domain != target_domain
                and target.split(".")[2:3]
                and target.split(".")[2] in PRIVATE_TO_A_DOMAIN
            ):
                found.append(f"{module} imports {target}, another domain's {target.split('.')[2]}")
    return found


def domain_cycles(graph: Mapping[str, frozenset[str]]) -> list[list[str]]:
    """Cycles among the domains' imports of each other (each domain a node)."""
    edges: dict[str, set[str]] = {name: set() for name in DOMAIN_NAMES}
    for module, targets in graph.items():
        source = _domain(module)
        for target in targets:
            other = _domain(target)
            if source is not None and other is not None and other != source:
                edges[source].add(other)
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    return cycles


def test_every_module_of_the_package_belongs_to_a_layer() -> None:
    unplaced = []
    for module in import_graph():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert unplaced == []


def test_imports_only_point_down_the_layers() -> None:
    assert violations(import_graph()) == []


def test_the_domains_import_each_other_without_a_cycle() -> None:
    assert domain_cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("switchyard.services.cache", "switchyard.api.app"),  # services -> api
        ("switchyard.db.binds", "switchyard.services.redis"),  # db -> services
        ("switchyard.platform.registry", "switchyard.roles.cli"),  # platform -> roles
        ("switchyard.documents.service", "switchyard.api.problems"),  # domain -> api
        ("switchyard.platform.worker", "switchyard.tasks.service"),  # platform -> domain
        ("switchyard.documents.endpoints", "switchyard.tasks.endpoints"),  # a domain's routes
        ("switchyard.datasources.service", "switchyard.documents.tasks"),  # a domain's tasks
    ],
)
def test_the_check_finds_an_import_that_breaks_a_rule(module: str, target: str) -> None:
    graph = dict(import_graph())
    graph[module] = graph[module] | {target}
    assert [v for v in violations(graph) if v.startswith(f"{module} imports {target}")] != []


def test_the_check_finds_a_cycle_between_domains() -> None:
    graph = dict(import_graph())
    graph["switchyard.auth.service"] = graph["switchyard.auth.service"] | {
        "switchyard.tenants.schemas"
    }
    graph["switchyard.tenants.schemas"] = graph.get("switchyard.tenants.schemas", frozenset()) | {
        "switchyard.auth.schemas"
    }
    assert any({"auth", "tenants"} <= set(cycle) for cycle in domain_cycles(graph))
