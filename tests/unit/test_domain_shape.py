"""Every domain has the same shape (docs/architecture.md): the files of the concerns it has, listed
once in `switchyard.domains`, and its tenant-scoped queries in a repository on the one base."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter

import switchyard
from switchyard.db.repository import TenantRepository
from switchyard.db.tenancy import tenant_owned
from switchyard.domains import DOMAINS, Domain, routers, task_modules

PACKAGE = Path(switchyard.__file__).parent
BY_NAME = {domain.name: domain for domain in DOMAINS}


def _files(domain: Domain) -> set[str]:
    return {path.name for path in (PACKAGE / domain.name).glob("*.py")}


def test_every_package_with_routes_or_tasks_is_in_the_domain_list() -> None:
    packages = {
        path.parent.name
        for name in ("endpoints.py", "tasks.py")
        for path in PACKAGE.glob(f"*/{name}")
        if path.parent.name != "api"
    }
    assert packages == set(BY_NAME)


@pytest.mark.parametrize("domain", DOMAINS, ids=lambda domain: domain.name)
def test_a_domain_has_the_files_of_its_concerns(domain: Domain) -> None:
    files = _files(domain)
    assert ("endpoints.py" in files) == bool(domain.routers)
    assert ("tasks.py" in files) == domain.tasks
    if domain.routers:
        assert "schemas.py" in files  # bodies are models of their own module, not inline
        endpoints = importlib.import_module(f"{domain.package}.endpoints")
        assert all(isinstance(getattr(endpoints, name), APIRouter) for name in domain.routers)
        tree = ast.parse((PACKAGE / domain.name / "endpoints.py").read_text(encoding="utf-8"))
        inline = [
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and any(getattr(base, "id", "") == "BaseModel" for base in node.bases)
        ]
        assert inline == []


def test_the_gateway_mounts_every_router_and_the_roles_load_every_task_module() -> None:
    mounted = routers()
    assert len(mounted) == sum(len(domain.routers) for domain in DOMAINS)
    assert set(task_modules()) == {
        f"{domain.package}.tasks"
        for domain in DOMAINS
        if (PACKAGE / domain.name / "tasks.py").exists()
    }


def _repositories() -> list[type[TenantRepository[Any]]]:
    found: list[type[TenantRepository[Any]]] = []
    for domain in DOMAINS:
        if "repository.py" in _files(domain):
            module = importlib.import_module(f"{domain.package}.repository")
            found.extend(
                cls
                for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, TenantRepository) and cls is not TenantRepository
            )
    return found


def test_tenant_owned_models_are_queried_through_the_tenant_repository_base() -> None:
    repositories = _repositories()
    assert {cls.__module__.split(".")[1] for cls in repositories} >= {
        "auth",
        "tasks",
        "documents",
        "datasources",
    }
    assert all(tenant_owned(cls.model) for cls in repositories)


def test_no_domain_builds_a_tenant_scoped_query_by_hand() -> None:
    """`db.tenancy.scoped` is called by the repository base alone."""
    callers = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "scoped":
                callers.append(str(path.relative_to(PACKAGE)))
    assert callers == ["db/repository.py"]


def test_no_domain_commits_a_session() -> None:
    """The unit of work (`db.session.unit_of_work`, run by the session dependency) is the one
    committer of a request: no module of a domain calls `commit()`."""
    committers = []
    for domain in DOMAINS:
        for path in sorted((PACKAGE / domain.name).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            committers += [
                f"{path.relative_to(PACKAGE)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "commit"
            ]
    assert committers == []
