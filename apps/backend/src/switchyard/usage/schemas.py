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


class UsageReport(BaseModel):
    tenant_id: uuid.UUID
    period_start: datetime
    period_end: datetime = Field(description="Exclusive")
    totals: list[UsageTotal] = Field(description="The period's use, by meter and subject")
    daily: list[UsageDay] = Field(description="Each day's use in the period, by meter (UTC)")
    stocks: dict[str, int] = Field(description="What the tenant holds now: documents, bytes")
