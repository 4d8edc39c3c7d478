"""When a definition's schedule was last due: interval ticks or cron, in its time zone."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter


def latest_due(schedule: dict[str, Any], anchor: datetime, now: datetime) -> datetime | None:
    """The newest tick at or before `now` that comes after `anchor`, or None.

    Missed ticks collapse into this one: a beat that was down publishes once, not a backlog."""
    if "every_seconds" in schedule:
        every = float(schedule["every_seconds"])
        ticks = math.floor((now - anchor).total_seconds() / every)
        return anchor + timedelta(seconds=ticks * every) if ticks >= 1 else None
    zone = ZoneInfo(str(schedule.get("timezone", "UTC")))
    previous: datetime = croniter(str(schedule["cron"]), now.astimezone(zone)).get_prev(datetime)
    return previous if previous > anchor else None
