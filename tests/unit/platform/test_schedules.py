from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from switchyard.platform.schedules import (
    CronSchedule,
    IntervalSchedule,
    from_stored,
    latest_due,
    to_stored,
)

ANCHOR = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_interval_is_not_due_before_its_first_tick() -> None:
    assert (
        latest_due(IntervalSchedule(every_seconds=60), ANCHOR, ANCHOR + timedelta(seconds=59))
        is None
    )


def test_interval_missed_ticks_collapse_into_the_latest() -> None:
    now = ANCHOR + timedelta(seconds=3 * 60 + 10)
    assert latest_due(IntervalSchedule(every_seconds=60), ANCHOR, now) == ANCHOR + timedelta(
        minutes=3
    )


def test_cron_is_read_in_its_time_zone() -> None:
    schedule = CronSchedule(cron="0 9 * * *", timezone="Asia/Tokyo")
    now = datetime(2026, 1, 2, 1, 30, tzinfo=UTC)  # 10:30 in Tokyo
    due = latest_due(schedule, ANCHOR - timedelta(days=2), now)
    assert due == datetime(2026, 1, 2, 0, 0, tzinfo=UTC)  # 09:00 in Tokyo


def test_cron_tick_at_or_before_the_anchor_is_not_due() -> None:
    schedule = CronSchedule(cron="0 * * * *")
    assert latest_due(schedule, ANCHOR, ANCHOR + timedelta(minutes=59)) is None
    assert latest_due(schedule, ANCHOR, ANCHOR + timedelta(minutes=61)) == ANCHOR + timedelta(
        hours=1
    )


def test_schedules_are_stored_as_json_and_read_back_as_models() -> None:
    cron = CronSchedule(cron="*/5 * * * *", timezone="Europe/Paris")
    assert to_stored(cron) == {"cron": "*/5 * * * *", "timezone": "Europe/Paris"}
    assert from_stored(to_stored(cron)) == cron
    assert from_stored({"every_seconds": 30}) == IntervalSchedule(every_seconds=30)
    assert to_stored(None) is None


@pytest.mark.parametrize("stored", [None, "0 * * * *", {"cron": "never"}, {"every_seconds": 0}])
def test_a_stored_schedule_that_is_not_one_is_refused(stored: object) -> None:
    with pytest.raises(ValidationError):
        from_stored(stored)
