from __future__ import annotations

from typing import get_args

from switchyard.auth.schemas import Scope
from switchyard.auth.scopes import ADMIN_ROLES, ROLE_SCOPES, SCOPES
from switchyard.db.models import Role


def test_the_api_key_schema_offers_exactly_the_known_scopes() -> None:
    assert set(get_args(Scope)) == set(SCOPES)


def test_members_read_data_sources_but_only_admins_change_them() -> None:
    assert "datasources:read" in ROLE_SCOPES[Role.MEMBER]
    assert "datasources:write" not in ROLE_SCOPES[Role.MEMBER]
    assert all("datasources:write" in ROLE_SCOPES[role] for role in ADMIN_ROLES)
    assert all(scope in SCOPES for scopes in ROLE_SCOPES.values() for scope in scopes)
