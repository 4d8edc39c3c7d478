"""A run's life has one owner: only `switchyard.platform.runs` writes `task_runs`
(docs/architecture.md, "A run's states"). Every other module reads it and asks the owner to
write. Checked in the source, like the layers: a Core INSERT, UPDATE or DELETE of the table
(`TaskRun`, its `__table__`), raw SQL that writes it, or a new TaskRun added to a session."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import switchyard

PACKAGE = Path(switchyard.__file__).parent
OWNER = PACKAGE / "platform" / "runs"
MIGRATIONS = PACKAGE / "db" / "migrations"
WRITES = ("insert", "update", "delete")
RAW_WRITE = re.compile(r"\b(UPDATE|DELETE\s+FROM|INSERT\s+INTO)\s+task_runs\b", re.IGNORECASE)


def _is_table(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("TaskRun", "_RUNS")
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "__table__"
        and isinstance(node.value, ast.Name)
        and node.value.id == "TaskRun"
    )


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def writes_of(source: str) -> list[str]:
    """Where `source` writes task_runs: one line each ("line: what")."""
    tree = ast.parse(source)
    found: list[str] = []
    new_runs: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        if _called(node.value) == "TaskRun":
            new_runs |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _called(node)
            if name in (*WRITES, "pg_insert") and node.args and _is_table(node.args[0]):
                found.append(f"{node.lineno}: {name}(TaskRun)")
            if name in ("add", "add_all", "merge") and node.args:
                argument = node.args[0]
                if isinstance(argument, ast.Name) and argument.id in new_runs:
                    found.append(f"{node.lineno}: session.{name}(a new TaskRun)")
        if isinstance(node, ast.Constant) and RAW_WRITE.search(str(node.value)):
            found.append(f"{node.lineno}: SQL writing task_runs")
    return found


def test_only_the_runs_package_writes_task_runs() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.is_relative_to(OWNER) and not path.is_relative_to(MIGRATIONS)
        if (found := writes_of(path.read_text()))
    }
    assert offenders == {}


def test_the_owner_is_where_the_writes_are() -> None:
    """The check sees the owner's own writes (so it sees everyone's)."""
    owned = {path.name: writes_of(path.read_text()) for path in OWNER.glob("*.py")}
    assert {name for name, found in owned.items() if found} == {
        "ledger.py",
        "admission.py",
        "retention.py",
    }


def test_each_kind_of_write_is_seen() -> None:
    source = """
from sqlalchemy import delete, update, text
async def f(session):
    run = TaskRun(id=1)
    session.add(run)
    await session.execute(update(TaskRun).values(state="x"))
    await session.execute(delete(TaskRun.__table__))
    await session.execute(text("update task_runs set state = 'x'"))
    await session.execute(text("SELECT * FROM task_runs"))  # a read: fine
"""
    assert {line.split(": ", 1)[1] for line in writes_of(source)} == {
        "session.add(a new TaskRun)",
        "update(TaskRun)",
        "delete(TaskRun)",
        "SQL writing task_runs",
    }
    assert len(writes_of(source)) == 4  # the read is not one
