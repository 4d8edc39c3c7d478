"""The `migrate` role: upgrade the database to the newest migration, then exit 0."""

from __future__ import annotations

import asyncio

from switchyard.db.migrate import migrate
from switchyard.roles.errors import RoleConfigurationError
from switchyard.settings import Settings


def run(settings: Settings) -> int:
    url = settings.database
    if url is None:
        raise RoleConfigurationError("DATABASE_URL: required by the migrate role")
    asyncio.run(migrate(url))
    return 0
