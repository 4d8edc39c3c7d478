from __future__ import annotations

import uuid
from datetime import date, datetime

from pydantic import BaseModel, Field


class UsageTotal(BaseModel):
    meter: str = Field(description="What is counted: llm.prompt_tokens, run.attempts, …")
    subject: str = Field(description="Of what: a purpose and model, a task, an embedder")
    quantity: int


class UsageDay(BaseModel):
    day: date
    meter: str
    quantity: int


class QuotaUse(BaseModel):
    quota: str = Field(description="The plan's limit: runs_per_month, stored_bytes, …")
    limit: int
    used: int = Field(description="In its current window (this month, today), or held now")
    unit: str
    resets_at: datetime | None = Field(description="When its window ends; null for a stock")


class UsageReport(BaseModel):
    tenant_id: uuid.UUID
    period_start: datetime
    period_end: datetime = Field(description="Exclusive")
    totals: list[UsageTotal] = Field(description="The period's use, by meter and subject")
    daily: list[UsageDay] = Field(description="Each day's use in the period, by meter (UTC)")
    stocks: dict[str, int] = Field(description="What the tenant holds now: documents, bytes")
    plan: str | None = Field(default=None, description="Its plan; null: none")
    soft_limit_percent: int | None = Field(
        default=None, description="Past this share of a quota, the tenant is warned"
    )
    quotas: list[QuotaUse] = Field(
        default_factory=list, description="Each quota its plan sets, and its use now"
    )


class Spend(BaseModel):
    llm_tokens: int = Field(description="Prompt, completion and embedding tokens")
    runs: int = Field(description="Runs accepted")
    run_seconds: int = Field(description="Seconds its runs' handlers ran")
    searches: int


class TenantSpend(Spend):
    tenant_id: uuid.UUID
    name: str
    slug: str
    plan: str | None


class PlatformUsage(BaseModel):
    period_start: datetime
    period_end: datetime = Field(description="Exclusive")
    items: list[TenantSpend] = Field(description="The top spenders: LLM tokens, then runs")
    others: Spend = Field(description="Every other tenant, together")
    next_cursor: str | None = Field(default=None, description="Always null: one page")
