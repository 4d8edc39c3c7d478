"""Quotas: a tenant's plan limits (db.models.plan, with its own overrides) checked against
the usage recorded for it (services.usage) **before** the work starts.

- `check` refuses what would pass a limit: a submission of runs over the runs quotas, a run
  of a task that spends LLM tokens once the token budget is spent, an upload over the stored
  bytes or documents. Period quotas (per month, per day, UTC) answer 429 with Retry-After
  until the period resets; a stock (stored bytes, documents) answers 403: it frees only when
  something is deleted.
- `LlmBudget` guards each call to the LLM provider, wherever it happens (a worker's run, the
  gateway's chat): a call *reserves* an upper bound of its tokens (prompt bytes, each a
  token at most, plus the completion's `max_tokens`) and is let through only while the
  tokens used plus those reserved by the calls in flight are under the budget; its actual
  tokens then replace the reservation, in one transaction with the usage counter. So
  concurrent callers overshoot a budget by less than the last admitted call's own tokens.
  A call refused fails its run without retrying it (the run is dead-lettered; replay it once
  the period resets).
- Past a plan's `soft_limit_percent` of a limit, the tenant is warned once a period: a log
  line, a metric (`switchyard_quota_soft_limit_total`) and an audit event
  (`quota.soft_limit_reached`).

A tenant with no plan and no overrides has no quota, and costs none of this."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from prometheus_client import Counter
from redis.asyncio import Redis
from sqlalchemy import Select, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.db.engine import in_transaction
from switchyard.db.models import AuditEvent, LlmReservation, Plan, Tenant, UsageCounter
from switchyard.db.models.plan import LIMITS
from switchyard.errors import SwitchyardError
from switchyard.logging import request_id_var
from switchyard.services.usage import WRITES_FAILED, Meter, Use, add_in, merged

logger = logging.getLogger(__name__)

REFUSALS = Counter(
    "switchyard_quota_refusals_total",
    "Work refused by a quota before it started, by quota",
    ["quota"],
)
SOFT_LIMITS = Counter(
    "switchyard_quota_soft_limit_total",
    "Tenants warned that they passed a plan's soft limit of a quota, by quota",
    ["quota"],
)

SOFT_LIMIT_ACTION: Final = "quota.soft_limit_reached"
PLATFORM_ACTOR: Final = "platform"
# A call's reservation lapses this long after it was made, if neither settled nor released
# (its process died): long enough for a slow stream, short enough not to hold a budget.
RESERVATION_SECONDS: Final = 900
# A call that would fit only once the calls in flight have settled waits for them this long.
WAIT_FOR_IN_FLIGHT_SECONDS: Final = 120.0
_WAIT_STEP_SECONDS: Final = 0.05
# The advisory lock of a tenant's LLM budget (two-key form; admission uses 0x5359).
_LOCK_NAMESPACE: Final = 0x5351
_LOCK = text("SELECT pg_advisory_xact_lock(:namespace, hashtext(CAST(:tenant AS text)))")


class Window(StrEnum):
    MONTH = "month"
    DAY = "day"
    STOCK = "stock"  # a level, not a period's sum


@dataclass(frozen=True)
class Quota:
    name: str  # the plan's column
    meters: tuple[Meter, ...]
    window: Window
    unit: str
    per_unit: int = 1  # the meters' quantity in one unit of the limit


LLM_METERS: Final = (Meter.LLM_PROMPT_TOKENS, Meter.LLM_COMPLETION_TOKENS, Meter.EMBEDDING_TOKENS)
QUOTAS: Final = {
    quota.name: quota
    for quota in (
        Quota("llm_tokens_per_month", LLM_METERS, Window.MONTH, "tokens"),
        Quota("llm_tokens_per_day", LLM_METERS, Window.DAY, "tokens"),
        Quota("runs_per_month", (Meter.RUNS_ACCEPTED,), Window.MONTH, "runs"),
        Quota("runs_per_day", (Meter.RUNS_ACCEPTED,), Window.DAY, "runs"),
        Quota("run_seconds_per_month", (Meter.RUN_MILLISECONDS,), Window.MONTH, "seconds", 1000),
        Quota("stored_bytes", (Meter.STORED_BYTES,), Window.STOCK, "bytes"),
        Quota("documents", (Meter.DOCUMENTS,), Window.STOCK, "documents"),
    )
}
LLM_QUOTAS: Final = ("llm_tokens_per_month", "llm_tokens_per_day")


def period(window: Window, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The window's first instant and the next window's (its reset), in UTC; none for a
    stock."""
    now = now.astimezone(UTC)
    if window is Window.MONTH:
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        return start, datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    if window is Window.DAY:
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    return None, None


@dataclass(frozen=True)
class Limits:
    """A tenant's limits: its plan's, each replaced by the tenant's own where it has one.
    A limit of None is no limit."""

    plan: str | None
    values: Mapping[str, int | None] = field(default_factory=dict)
    soft_limit_percent: int = 80

    def of(self, name: str) -> int | None:
        return self.values.get(name)


# What a principal's query selects besides its own columns (with `with_limits`): the tenant's
# plan and overrides, so that a change applies at the next request without a read of its own.
LIMIT_COLUMNS: Final = (
    Plan.name.label("plan_name"),
    *(getattr(Plan, name).label(f"plan_{name}") for name in LIMITS),
    Plan.soft_limit_percent.label("plan_soft_limit_percent"),
    Tenant.limit_overrides.label("limit_overrides"),
)


def with_limits(statement: Select[*tuple[Any, ...]]) -> Select[Any]:
    """`statement` (which joins `tenants`) with the tenant's limits added."""
    return statement.add_columns(*LIMIT_COLUMNS).outerjoin(Plan, Plan.id == Tenant.plan_id)


def limits_from(row: Any) -> Limits | None:
    """The limits in a row of `with_limits`; None for a tenant without plan or overrides."""
    overrides: Mapping[str, Any] = row.limit_overrides or {}
    if row.plan_name is None and not overrides:
        return None
    values = {
        name: overrides[name] if name in overrides else getattr(row, f"plan_{name}")
        for name in LIMITS
    }
    return Limits(row.plan_name, values, row.plan_soft_limit_percent or 80)


async def limits_of(connection: AsyncConnection, tenant_id: uuid.UUID) -> Limits | None:
    statement = with_limits(select(Tenant.id).where(Tenant.id == tenant_id))
    row = (await connection.execute(statement)).one_or_none()
    return limits_from(row) if row is not None else None


async def used(
    connection: AsyncConnection, tenant_id: uuid.UUID, names: Iterable[str], now: datetime
) -> dict[str, int]:
    """What the tenant used of each quota `names` in its current window, in the limit's
    unit; one read of its counters."""
    quotas = [QUOTAS[name] for name in names]
    meters = sorted({meter.value for quota in quotas for meter in quota.meters})
    month, _ = period(Window.MONTH, now)
    day, _ = period(Window.DAY, now)
    quantity = UsageCounter.quantity
    statement = (
        select(
            UsageCounter.meter,
            func.sum(quantity).filter(UsageCounter.hour >= month),
            func.sum(quantity).filter(UsageCounter.hour >= day),
            func.sum(quantity),
        )
        .where(UsageCounter.tenant_id == tenant_id, UsageCounter.meter.in_(meters))
        .group_by(UsageCounter.meter)
    )
    if all(quota.window is not Window.STOCK for quota in quotas):
        statement = statement.where(UsageCounter.hour >= month)
    sums = {
        meter: {Window.MONTH: m or 0, Window.DAY: d or 0, Window.STOCK: s or 0}
        for meter, m, d, s in (await connection.execute(statement)).all()
    }
    return {
        quota.name: int(
            sum(sums.get(meter.value, {}).get(quota.window, 0) for meter in quota.meters)
            // quota.per_unit
        )
        for quota in quotas
    }


class QuotaExceededError(SwitchyardError):
    """A quota of the tenant's plan would be passed: 429 until a period quota resets (with
    Retry-After), 403 for a stock. The problem names the quota, its limit, what is used, what
    was asked and when it resets. Never retried within a run."""

    status = 429
    code = "quota_exceeded"
    title = "Quota exceeded"
    retry_in_run = False

    def __init__(
        self, quota: Quota, limit: int, used: int, requested: int, now: datetime | None = None
    ) -> None:
        now = now or datetime.now(UTC)
        _, resets = period(quota.window, now)
        when = f"; it resets at {resets.isoformat()}" if resets else ""
        super().__init__(
            f"The plan's {quota.name} quota is {limit:,} {quota.unit}; {used:,} are used and "
            f"this needs {requested:,} more{when}.",
            headers=(
                {
                    "Retry-After": str(
                        max(1, int((resets - (now or datetime.now(UTC))).total_seconds()))
                    )
                }
                if resets
                else None
            ),
        )
        self.quota = quota
        self.extensions = {
            "quota": quota.name,
            "limit": limit,
            "used": used,
            "requested": requested,
            "unit": quota.unit,
            "resets_at": resets.isoformat() if resets else None,
        }
        REFUSALS.labels(quota.name).inc()


class StockQuotaExceededError(QuotaExceededError):
    status = 403


def refusal(quota: Quota, limit: int, used: int, requested: int) -> QuotaExceededError:
    kind = StockQuotaExceededError if quota.window is Window.STOCK else QuotaExceededError
    return kind(quota, limit, used, requested)


@dataclass(frozen=True)
class Figure:
    quota: str
    limit: int
    used: int


async def check(
    connection: AsyncConnection,
    tenant_id: uuid.UUID,
    limits: Limits | None,
    demands: Mapping[str, int],
) -> list[Figure]:
    """Refuse (QuotaExceededError) when what the tenant used plus `demands` (per quota, in
    its unit) passes a limit; the figures of the quotas checked otherwise."""
    if limits is None:
        return []
    asked = {name: n for name, n in demands.items() if limits.of(name) is not None}
    if not asked:
        return []
    figures = await used(connection, tenant_id, asked, datetime.now(UTC))
    checked = []
    for name, requested in asked.items():
        limit = limits.of(name)
        assert limit is not None
        if figures[name] + requested > limit:
            raise refusal(QUOTAS[name], limit, figures[name], requested)
        checked.append(Figure(name, limit, figures[name] + requested))
    return checked


class Quotas:
    """The soft-limit warnings, for a role's services."""

    def __init__(
        self, engine: AsyncEngine | None, redis: Redis | None, namespace: str = "switchyard"
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.namespace = namespace
        self._warned: set[str] = set()  # without Redis: once a period per process

    async def warn(
        self, tenant_id: uuid.UUID, limits: Limits | None, figures: list[Figure]
    ) -> None:
        """Warn once a period for each quota past the plan's soft limit."""
        if limits is None:
            return
        now = datetime.now(UTC)
        for figure in figures:
            if figure.used * 100 < figure.limit * limits.soft_limit_percent:
                continue
            quota = QUOTAS[figure.quota]
            start, resets = period(quota.window, now)
            key = f"{self.namespace}:quota-warned:{tenant_id}:{quota.name}:{start or 'stock'}"
            if await self._first(key, resets, now):
                await self._announce(tenant_id, limits, figure)

    async def _first(self, key: str, resets: datetime | None, now: datetime) -> bool:
        ttl = int((resets - now).total_seconds()) + 60 if resets else 30 * 86400
        if self.redis is not None:
            try:
                return bool(await self.redis.set(key, "1", nx=True, ex=ttl))
            except Exception as exc:  # Redis down: each process warns once instead
                logger.info("quota warning not deduplicated on Redis", extra={"error": repr(exc)})
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

    async def _announce(self, tenant_id: uuid.UUID, limits: Limits, figure: Figure) -> None:
        SOFT_LIMITS.labels(figure.quota).inc()
        details = {
            "quota": figure.quota,
            "limit": figure.limit,
            "used": figure.used,
            "soft_limit_percent": limits.soft_limit_percent,
            "plan": limits.plan,
        }
        logger.warning("quota soft limit reached", extra={"tenant_id": str(tenant_id), **details})
        if self.engine is None:
            return
        row = {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "action": SOFT_LIMIT_ACTION,
            "actor": PLATFORM_ACTOR,
            "target_type": "quota",
            "target_id": figure.quota,
            "request_id": request_id_var.get(),
            "details": details,
        }
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(AuditEvent).values(row))
        except Exception as exc:  # a warning never fails the work it warns about
            logger.warning("quota warning not recorded", extra={"error": repr(exc)})


@dataclass(frozen=True)
class Reservation:
    id: uuid.UUID
    tenant_id: uuid.UUID
    tokens: int


class _InFlight(Exception):  # noqa: N818 - internal signal: wait for the calls in flight
    def __init__(self, quota: Quota, limit: int, used: int) -> None:
        super().__init__(quota.name)
        self.quota, self.limit, self.used = quota, limit, used


class LlmBudget:
    """The LLM token budgets of tenants' plans, guarding each provider call (see the module's
    docstring). Without a database it guards nothing."""

    def __init__(self, engine: AsyncEngine | None, quotas: Quotas | None = None) -> None:
        self.engine = engine
        self.quotas = quotas

    async def reserve(self, tenant_id: uuid.UUID, tokens: int) -> Reservation | None:
        """Reserve `tokens` (an upper bound of the call's) for a call; None when the tenant
        has no token budget. Raises QuotaExceededError when the budget is spent; waits while
        it is spent only if the calls in flight take all they reserved."""
        if self.engine is None:
            return None
        deadline = time.monotonic() + WAIT_FOR_IN_FLIGHT_SECONDS
        while True:
            try:
                return await in_transaction(
                    self.engine, lambda connection: self._reserve(connection, tenant_id, tokens)
                )
            except _InFlight as held:
                if time.monotonic() > deadline:  # the calls in flight did not settle
                    raise refusal(held.quota, held.limit, held.used, tokens) from None
                await asyncio.sleep(_WAIT_STEP_SECONDS)

    async def _reserve(
        self, connection: AsyncConnection, tenant_id: uuid.UUID, tokens: int
    ) -> Reservation | None:
        limits = await limits_of(connection, tenant_id)
        names = [name for name in LLM_QUOTAS if limits is not None and limits.of(name) is not None]
        if limits is None or not names:
            return None
        await connection.execute(_LOCK, {"namespace": _LOCK_NAMESPACE, "tenant": str(tenant_id)})
        await connection.execute(
            delete(LlmReservation).where(
                LlmReservation.tenant_id == tenant_id, LlmReservation.expires_at < func.now()
            )
        )
        reserved = int(
            await connection.scalar(
                select(func.coalesce(func.sum(LlmReservation.tokens), 0)).where(
                    LlmReservation.tenant_id == tenant_id
                )
            )
            or 0
        )
        figures = await used(connection, tenant_id, names, datetime.now(UTC))
        for name in names:
            limit = limits.of(name)
            assert limit is not None
            if figures[name] >= limit:
                raise refusal(QUOTAS[name], limit, figures[name], tokens)
            if figures[name] + reserved >= limit:
                raise _InFlight(QUOTAS[name], limit, figures[name])
        reservation = Reservation(uuid.uuid4(), tenant_id, tokens)
        await connection.execute(
            insert(LlmReservation).values(
                id=reservation.id,
                tenant_id=tenant_id,
                tokens=tokens,
                expires_at=func.now() + timedelta(seconds=RESERVATION_SECONDS),
            )
        )
        if self.quotas is not None:
            checked = [
                Figure(name, limits.of(name) or 0, figures[name] + reserved + tokens)
                for name in names
            ]
            await self.quotas.warn(tenant_id, limits, checked)
        return reservation

    async def settle(self, reservation: Reservation | None, uses: list[Use]) -> bool:
        """Record the call's actual `uses` and end its reservation, in one transaction. False
        when it could not be written (logged and counted; the reservation then lapses)."""
        if self.engine is None or (reservation is None and not merged(uses)):
            return True

        async def write(connection: AsyncConnection) -> None:
            if reservation is not None:
                await connection.execute(
                    delete(LlmReservation).where(LlmReservation.id == reservation.id)
                )
            await add_in(connection, *uses)

        try:
            await in_transaction(self.engine, write)
        except Exception as exc:  # never the call's failure: logged, counted, short
            WRITES_FAILED.inc(len(merged(uses)))
            logger.warning("LLM usage not recorded", extra={"error": repr(exc)})
            return False
        return True

    async def release(self, reservation: Reservation | None) -> None:
        """End the reservation of a call that failed (nothing is recorded)."""
        if self.engine is None or reservation is None:
            return
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    delete(LlmReservation).where(LlmReservation.id == reservation.id)
                )
        except Exception as exc:  # it lapses after RESERVATION_SECONDS
            logger.warning("LLM reservation not released", extra={"error": repr(exc)})
