"""Schedules of task definitions: cron (in a time zone) or a fixed interval; and when one was
last due. Stored as JSON in `task_definitions.schedule`, converted here and nowhere else."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(max_length=200, examples=["*/5 * * * *"])
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("is not a valid five-field cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known IANA time zone") from None
        return value


class IntervalSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_seconds: int = Field(ge=1, le=31 * 24 * 3600)


Schedule = CronSchedule | IntervalSchedule

_STORED: TypeAdapter[Schedule] = TypeAdapter(Schedule)


def to_stored(schedule: Schedule | None) -> dict[str, Any] | None:
    """The JSON a schedule is stored as."""
    return schedule.model_dump() if schedule is not None else None


def from_stored(stored: object) -> Schedule:
    """A stored schedule; ValidationError (a ValueError) when it is not one."""
    return _STORED.validate_python(stored)


def latest_due(schedule: Schedule, anchor: datetime, now: datetime) -> datetime | None:
    """The newest tick at or before `now` that comes after `anchor`, or None.

    Missed ticks collapse into this one: a beat that was down publishes once, not a backlog."""
    if isinstance(schedule, IntervalSchedule):
        every = float(schedule.every_seconds)
        ticks = math.floor((now - anchor).total_seconds() / every)
        return anchor + timedelta(seconds=ticks * every) if ticks >= 1 else None
    zone = ZoneInfo(schedule.timezone)
    previous: datetime = croniter(schedule.cron, now.astimezone(zone)).get_prev(datetime)
    return previous if previous > anchor else None


def next_due(schedule: Schedule, anchor: datetime, now: datetime) -> datetime:
    """The first tick after `now` (the next time beat publishes the definition)."""
    if isinstance(schedule, IntervalSchedule):
        every = float(schedule.every_seconds)
        ticks = max(math.floor((now - anchor).total_seconds() / every), 0) + 1
        return anchor + timedelta(seconds=ticks * every)
    zone = ZoneInfo(schedule.timezone)
    following: datetime = croniter(schedule.cron, now.astimezone(zone)).get_next(datetime)
    return following
