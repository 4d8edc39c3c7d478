"""Sums of a tenant's usage counters."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, Select, func
from sqlalchemy import cast as sql_cast

from switchyard.db.models import UsageCounter
from switchyard.db.repository import TenantRepository
from switchyard.services.usage import STOCKS


class UsageRepository(TenantRepository[UsageCounter]):
    model = UsageCounter
    not_found = "No usage."

    def _within(self, start: datetime, end: datetime) -> Select[Any]:
        return self.select(UsageCounter.hour >= start, UsageCounter.hour < end)

    async def totals(self, start: datetime, end: datetime) -> list[tuple[str, str, int]]:
        statement = (
            self._within(start, end)
            .where(UsageCounter.meter.not_in(STOCKS))
            .with_only_columns(
                UsageCounter.meter, UsageCounter.subject, func.sum(UsageCounter.quantity)
            )
            .group_by(UsageCounter.meter, UsageCounter.subject)
            .order_by(UsageCounter.meter, UsageCounter.subject)
        )
        return [(m, s, int(q)) for m, s, q in (await self.session.execute(statement)).all()]

    async def daily(self, start: datetime, end: datetime) -> list[tuple[date, str, int]]:
        day = sql_cast(func.timezone("UTC", UsageCounter.hour), Date)
        statement = (
            self._within(start, end)
            .where(UsageCounter.meter.not_in(STOCKS))
            .with_only_columns(day, UsageCounter.meter, func.sum(UsageCounter.quantity))
            .group_by(day, UsageCounter.meter)
            .order_by(day, UsageCounter.meter)
        )
        return [(d, m, int(q)) for d, m, q in (await self.session.execute(statement)).all()]

    async def stocks(self) -> dict[str, int]:
        statement = (
            self.select(UsageCounter.meter.in_(STOCKS))
            .with_only_columns(UsageCounter.meter, func.sum(UsageCounter.quantity))
            .group_by(UsageCounter.meter)
        )
        found = {m: int(q) for m, q in (await self.session.execute(statement)).all()}
        return {str(meter): found.get(str(meter), 0) for meter in sorted(STOCKS)}
