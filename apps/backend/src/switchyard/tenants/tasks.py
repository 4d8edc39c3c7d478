"""tenants.export: a tenant's data as one archive (tenants.export's module says what is in it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from switchyard.platform.registry import RetryPolicy, TaskContext, task
from switchyard.tenants.export import export


class ExportInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task(
    "tenants.export",
    input=ExportInput,
    description="Write the tenant's data (every table's rows, its objects) to an archive",
    access="internal",
    retry=RetryPolicy(max_retries=2, backoff_seconds=10),
    soft_time_limit=3600,
    time_limit=3660,
)
async def export_task(payload: ExportInput, ctx: TaskContext) -> dict[str, Any]:
    """The archive goes to `exports/<run id>.tar.gz` in the tenant's prefix."""
    result = await export(ctx.services, ctx.tenant_id, ctx.run_id)
    ctx.logger.info("tenant exported", extra={"size_bytes": result.size_bytes})
    return result.model_dump()
