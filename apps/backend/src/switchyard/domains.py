"""The product's domains, in one list: the gateway mounts their routers from it, every role
loads their task modules from it, `migrate` applies their migration branches. Adding a domain
is one entry here, or, for a product's own package, one name in DOMAIN_PACKAGES
(docs/adding-a-domain.md).

A layer of its own, between api/ (and roles/) above and the domains below: it names the
domains' modules and imports them when asked, so a worker never imports a router and the
gateway never hard-codes a domain."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fastapi import APIRouter

from switchyard.auth.scopes import SCOPES
from switchyard.errors import RoleConfigurationError
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.registry import load_task_modules as _load
from switchyard.settings import Settings


@dataclass(frozen=True)
class Domain:
    """A domain's package (`switchyard.<name>` unless named): the routers its `endpoints`
    module defines (mounted under /api/v1, in this order), whether its `tasks` module declares
    tasks, and whether it has an Alembic branch of its own in `migrations/versions/` (a
    product's package; the product's domains share `db/migrations`)."""

    name: str
    routers: tuple[str, ...] = ("router",)
    tasks: bool = False
    package: str = ""
    migrations: bool = False

    def __post_init__(self) -> None:
        if not self.package:
            object.__setattr__(self, "package", f"switchyard.{self.name}")

    def migrations_dir(self) -> Path:
        init = importlib.import_module(self.package).__file__
        if init is None:
            raise RoleConfigurationError(f"{self.package!r} is not a package with a directory")
        return Path(init).parent / "migrations" / "versions"


DOMAINS: Final = (
    Domain("auth", routers=("router", "keys_router")),
    Domain(
        "accounts",
        routers=("router", "members_router", "invitations_router", "mailbox_router"),
        tasks=True,
    ),
    Domain("oauth", routers=("router", "clients_router")),
    Domain("tenants", routers=("router", "plans_router", "exports_router"), tasks=True),
    Domain("audit"),
    Domain("usage"),
    Domain("tasks"),
    Domain("workflows"),
    Domain("datasources", tasks=True),
    Domain("documents", tasks=True),
    Domain("ai", routers=("llm_router", "graph_router")),
    Domain("system", routers=(), tasks=True),
)


def load_domains(packages: Sequence[str]) -> tuple[Domain, ...]:
    """The product's domains, then those of `packages` (DOMAIN_PACKAGES): each a package whose
    `DOMAIN` is a `Domain`. A package that cannot be imported, has no DOMAIN or takes a name
    already used stops the role with a configuration error naming it."""
    found = list(DOMAINS)
    for package in packages:
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise RoleConfigurationError(
                f"DOMAIN_PACKAGES: cannot import {package!r}: {exc}"
            ) from exc
        domain = getattr(module, "DOMAIN", None)
        if not isinstance(domain, Domain):
            raise RoleConfigurationError(
                f"DOMAIN_PACKAGES: {package!r} has no DOMAIN = Domain(...)"
            )
        if domain.name in {known.name for known in found}:
            raise RoleConfigurationError(
                f"DOMAIN_PACKAGES: {package!r} names the domain {domain.name!r}, taken already"
            )
        found.append(domain)
    return tuple(found)


def version_locations(domains: Sequence[Domain]) -> list[Path]:
    """The migration branches of the domains that have their own."""
    return [domain.migrations_dir() for domain in domains if domain.migrations]


def routers(domains: Sequence[Domain] = DOMAINS) -> list[APIRouter]:
    """Every domain's routers, in the order of `domains`."""
    found: list[APIRouter] = []
    for domain in domains:
        if domain.routers:
            module = importlib.import_module(f"{domain.package}.endpoints")
            found.extend(getattr(module, name) for name in domain.routers)
    return found


def task_modules(domains: Sequence[Domain] = DOMAINS) -> tuple[str, ...]:
    return tuple(f"{domain.package}.tasks" for domain in domains if domain.tasks)


def load_task_modules(
    extra: Sequence[str] = (),
    *,
    system_tasks: bool = True,
    domains: Sequence[Domain] = DOMAINS,
) -> TaskRegistry:
    """The complete registry: the domains' tasks, then those of `extra` (TASK_MODULES)."""
    return _load(task_modules(domains), extra, scopes=frozenset(SCOPES), system_tasks=system_tasks)


def registry_for(settings: Settings, domains: Sequence[Domain] | None = None) -> TaskRegistry:
    """The registry of a role: every domain's tasks (`domains`, or those of DOMAIN_PACKAGES
    loaded now), then TASK_MODULES."""
    return load_task_modules(
        settings.task_modules,
        system_tasks=settings.system_tasks_on,
        domains=load_domains(settings.domain_packages) if domains is None else domains,
    )
