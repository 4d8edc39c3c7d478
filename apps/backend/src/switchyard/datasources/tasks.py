"""datasources.test_connection: one bounded connectivity test of a tenant's data source."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

from switchyard.datasources import connect
from switchyard.datasources.crypto import DataSourceCipher
from switchyard.datasources.guard import Reach
from switchyard.datasources.repository import DataSourceRepository
from switchyard.platform.registry import RetryPolicy, TaskContext, task

TEST_TASK = "datasources.test_connection"


class TestConnectionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_source_id: uuid.UUID


@task(
    TEST_TASK,
    input=TestConnectionInput,
    description="Connect to a data source once and report the outcome (bounded in time)",
    retry=RetryPolicy(max_retries=0),
    soft_time_limit=75,
    time_limit=90,
    access="internal",  # POST /data-sources/{id}/test starts it (datasources:write)
)
async def test_connection(payload: TestConnectionInput, ctx: TaskContext) -> dict[str, object]:
    services = ctx.services
    settings = services.settings
    async with services.database_sessions() as session:
        source = await DataSourceRepository(session, ctx.tenant_id).get_or_404(
            payload.data_source_id
        )
        encrypted = source.encrypted_connection_url
    url = DataSourceCipher.from_settings(settings).decrypt(encrypted)
    outcome = await connect.probe(
        url,
        reach=Reach.of(settings),
        seconds=settings.data_source_test_timeout_seconds,
    )
    ctx.logger.info(
        "data source tested",
        extra={"data_source_id": str(payload.data_source_id), "ok": outcome["ok"]},
    )
    return {"data_source_id": str(payload.data_source_id), **outcome}
