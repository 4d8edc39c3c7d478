"""DOMAIN_PACKAGES: a product's own domains, loaded after the product's, refused clearly."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from switchyard.domains import DOMAINS, Domain, load_domains, task_modules, version_locations
from switchyard.errors import RoleConfigurationError


@pytest.fixture
def package() -> Iterator[types.ModuleType]:
    module = types.ModuleType("acme_billing")
    module.__file__ = "/srv/acme/acme_billing/__init__.py"
    sys.modules["acme_billing"] = module
    yield module
    del sys.modules["acme_billing"]


def test_a_package_domain_comes_after_the_products_own(package: types.ModuleType) -> None:
    package.DOMAIN = Domain("billing", package="acme_billing", tasks=True, migrations=True)  # type: ignore[attr-defined]
    domains = load_domains(["acme_billing"])
    assert domains[: len(DOMAINS)] == DOMAINS
    assert domains[-1].package == "acme_billing"
    assert task_modules(domains)[-1] == "acme_billing.tasks"
    assert [str(path) for path in version_locations(domains)] == [
        "/srv/acme/acme_billing/migrations/versions"
    ]
    assert load_domains([]) == DOMAINS
    assert Domain("tasks").package == "switchyard.tasks"


def test_a_package_that_cannot_be_imported_names_itself() -> None:
    with pytest.raises(
        RoleConfigurationError, match=r"DOMAIN_PACKAGES: cannot import 'acme\.nope'"
    ):
        load_domains(["acme.nope"])


def test_a_package_without_a_domain_is_refused(package: types.ModuleType) -> None:
    with pytest.raises(RoleConfigurationError, match=r"'acme_billing' has no DOMAIN = Domain"):
        load_domains(["acme_billing"])


def test_a_domain_name_is_used_once(package: types.ModuleType) -> None:
    package.DOMAIN = Domain("tasks", package="acme_billing")  # type: ignore[attr-defined]
    with pytest.raises(RoleConfigurationError, match=r"names the domain 'tasks', taken already"):
        load_domains(["acme_billing"])
