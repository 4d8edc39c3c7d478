"""With an `analytics` bind (the local MariaDB here), beat copies the usage counters there:
what changed since the last copy, as absolute figures, so copying twice changes nothing and a
counter that grew is copied again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.binds import Bind, create_binds, migrate_bind
from switchyard.db.binds.models import UsageCounterCopy
from switchyard.services import usage
from switchyard.services.usage import Meter, UsageRecorder, Use
from switchyard.settings import Settings
from tests.integration.db.test_binds import mariadb_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("mariadb_url")


@pytest.fixture
async def analytics(mariadb_url: str) -> AsyncIterator[Bind]:  # noqa: F811 - the fixture
    await migrate_bind("analytics", mariadb_url)
    bind = create_binds(Settings(database_binds={"analytics": mariadb_url}), "test")["analytics"]
    yield bind
    await bind.engine.dispose()


async def copies(bind: Bind, tenant_id: uuid.UUID) -> dict[tuple[str, str], int]:
    async with bind.engine.connect() as connection:
        rows = await connection.execute(
            select(
                UsageCounterCopy.meter, UsageCounterCopy.subject, UsageCounterCopy.quantity
            ).where(UsageCounterCopy.tenant_id == tenant_id)
        )
        return {(meter, subject): quantity for meter, subject, quantity in rows}


async def test_counters_are_copied_as_they_stand_and_again_when_they_change(
    engine: AsyncEngine, tenant_id: uuid.UUID, analytics: Bind
) -> None:
    recorder = UsageRecorder(engine)
    await recorder.add(
        Use(tenant_id, Meter.LLM_PROMPT_TOKENS, "chat/glm-4-flash", 120),
        Use(tenant_id, Meter.RUN_ATTEMPTS, "reports.build", 3),
    )
    assert await usage.ship(engine, analytics) >= 2
    assert await copies(analytics, tenant_id) == {
        ("llm.prompt_tokens", "chat/glm-4-flash"): 120,
        ("run.attempts", "reports.build"): 3,
    }
    await usage.ship(engine, analytics)  # again, nothing new: the same figures
    assert (await copies(analytics, tenant_id))[("run.attempts", "reports.build")] == 3

    await recorder.add(Use(tenant_id, Meter.LLM_PROMPT_TOKENS, "chat/glm-4-flash", 30))
    assert await usage.ship(engine, analytics) >= 1
    assert await copies(analytics, tenant_id) == {
        ("llm.prompt_tokens", "chat/glm-4-flash"): 150,
        ("run.attempts", "reports.build"): 3,
    }
