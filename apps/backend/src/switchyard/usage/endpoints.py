"""/usage: what the tenant used this month (or another), for its owners and admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from switchyard.auth.dependencies import SuperuserDep, TenantAdminDep
from switchyard.platform.dependencies import SessionDep
from switchyard.usage import service
from switchyard.usage.schemas import PlatformUsage, UsageReport

router = APIRouter(prefix="/usage", tags=["usage"])


Month = Annotated[
    str | None,
    Query(
        pattern=r"^(19[7-9]\d|2\d{3})-(0[1-9]|1[0-2])$",
        description="YYYY-MM, in UTC; this month by default",
    ),
]


@router.get("")
async def read_usage(
    admin: TenantAdminDep, session: SessionDep, month: Month = None
) -> UsageReport:
    """The month's use by meter and subject, its daily series, and what the tenant holds
    now. Recorded where each use happens: LLM tokens by purpose and model as the provider
    reported them, embedded texts, run attempts and their milliseconds by task, searches;
    documents and stored bytes as levels. With a plan: each of its quotas and its use now."""
    return await service.report(session, admin.tenant_id, month, admin.limits)


@router.get("/tenants")
async def read_platform_usage(
    _: SuperuserDep,
    session: SessionDep,
    month: Month = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> PlatformUsage:
    """The platform superuser's view: the month's top spenders (LLM tokens, then runs), and
    every other tenant together."""
    return await service.platform_report(session, month, limit)
