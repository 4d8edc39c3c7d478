"""A tenant's usage report for a calendar month (UTC)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import Tenant
from switchyard.services import quotas, usage
from switchyard.services.quotas import QUOTAS, Limits
from switchyard.usage.repository import UsageRepository
from switchyard.usage.schemas import (
    PlatformUsage,
    QuotaUse,
    Spend,
    TenantSpend,
    UsageDay,
    UsageReport,
    UsageTotal,
)


def month_bounds(month: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The first instant of `month` ("YYYY-MM", default this one) and of the next, in UTC."""
    if month is None:
        within = now or datetime.now(UTC)
    else:
        year, number = (int(part) for part in month.split("-"))
        within = datetime(year, number, 1, tzinfo=UTC)
    start, end = quotas.period(quotas.Window.MONTH, within)
    assert start is not None
    assert end is not None
    return start, end


async def report(
    session: AsyncSession, tenant_id: uuid.UUID, month: str | None, limits: Limits | None
) -> UsageReport:
    start, end = month_bounds(month)
    counters = UsageRepository(session, tenant_id)
    totals = await counters.totals(start, end)
    daily = await counters.daily(start, end)
    return UsageReport(
        plan=limits.plan if limits else None,
        soft_limit_percent=limits.soft_limit_percent if limits else None,
        quotas=await _quota_use(session, tenant_id, limits),
        tenant_id=tenant_id,
        period_start=start,
        period_end=end,
        totals=[UsageTotal(meter=m, subject=s, quantity=q) for m, s, q in totals],
        daily=[UsageDay(day=d, meter=m, quantity=q) for d, m, q in daily],
        stocks=await counters.stocks(),
    )


async def _quota_use(
    session: AsyncSession, tenant_id: uuid.UUID, limits: Limits | None
) -> list[QuotaUse]:
    """Each quota the tenant's plan sets, with its use in its current window."""
    named = {name: limits.of(name) for name in QUOTAS} if limits else {}
    limited = {name: limit for name, limit in named.items() if limit is not None}
    if not limited:
        return []
    now = datetime.now(UTC)
    figures = await quotas.used(await session.connection(), tenant_id, limited, now)
    return [
        QuotaUse(
            quota=name,
            limit=limit,
            used=figures[name],
            unit=QUOTAS[name].unit,
            resets_at=quotas.period(QUOTAS[name].window, now)[1],
        )
        for name, limit in limited.items()
    ]


async def platform_report(session: AsyncSession, month: str | None, limit: int) -> PlatformUsage:
    """The month's top spenders across tenants, and the rest together (the superuser's)."""
    start, end = month_bounds(month)
    top, rest = await usage.top_spenders(await session.connection(), start, end, limit)
    tenants = {
        tenant.id: tenant
        for tenant in await session.scalars(
            select(Tenant).where(Tenant.id.in_([spender.tenant_id for spender in top]))
        )
    }
    items = [
        TenantSpend(
            tenant_id=tenant.id,
            name=tenant.name,
            slug=tenant.slug,
            plan=tenant.plan,
            **_spend(spender),
        )
        for spender in top
        if (tenant := tenants.get(spender.tenant_id)) is not None  # type: ignore[arg-type]
    ]
    return PlatformUsage(
        period_start=start, period_end=end, items=items, others=Spend(**_spend(rest))
    )


def _spend(spender: usage.Spender) -> dict[str, int]:
    return {
        "llm_tokens": spender.llm_tokens,
        "runs": spender.runs,
        "run_seconds": spender.run_seconds,
        "searches": spender.searches,
    }
