"""The one set of scopes, and what each tenant role may do."""

from __future__ import annotations

from typing import Final

from switchyard.db.models import Role

SCOPES: Final[dict[str, str]] = {
    "tasks:read": "See registered tasks, definitions, runs, events and dead letters",
    "tasks:run": "Run and cancel tasks",
    "tasks:admin": "Register, change and delete definitions; replay and delete dead letters",
    "documents:read": "Read knowledge documents and search them",
    "documents:write": "Upload, change and delete knowledge documents",
    "datasources:read": "See the tenant's data sources (passwords redacted)",
    "datasources:write": "Add, change, delete and test data sources",
    "llm:use": "Call the LLM: chat completions and embeddings",
}

ROLE_SCOPES: Final[dict[Role, frozenset[str]]] = {
    Role.OWNER: frozenset(SCOPES),
    Role.ADMIN: frozenset(SCOPES),
    Role.MEMBER: frozenset(
        {
            "tasks:read",
            "tasks:run",
            "documents:read",
            "documents:write",
            "datasources:read",
            "llm:use",
        }
    ),
}

ADMIN_ROLES: Final = frozenset({Role.OWNER, Role.ADMIN})
