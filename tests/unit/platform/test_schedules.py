from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from switchyard.platform.schedules import (
    CronSchedule,
    IntervalSchedule,
    from_stored,
    latest_due,
    next_due,
    to_stored,
)

ANCHOR = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NEXT_ANCHOR = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


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


def test_an_interval_fires_next_at_the_first_tick_after_now() -> None:
    every = IntervalSchedule(every_seconds=600)
    now = NEXT_ANCHOR + timedelta(minutes=25)
    assert next_due(every, NEXT_ANCHOR, now) == NEXT_ANCHOR + timedelta(minutes=30)
    # Exactly on a tick: that one is due now (latest_due), the next is one interval on.
    on_tick = NEXT_ANCHOR + timedelta(minutes=20)
    assert latest_due(every, NEXT_ANCHOR, on_tick) == on_tick
    assert next_due(every, NEXT_ANCHOR, on_tick) == NEXT_ANCHOR + timedelta(minutes=30)
    # Before its anchor (a clock behind): the first tick.
    assert next_due(
        every, NEXT_ANCHOR, NEXT_ANCHOR - timedelta(hours=1)
    ) == NEXT_ANCHOR + timedelta(minutes=10)


def test_a_cron_fires_next_in_its_own_time_zone() -> None:
    daily = CronSchedule(cron="30 9 * * *", timezone="Europe/Lisbon")
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # Lisbon is on UTC in December
    assert next_due(daily, NEXT_ANCHOR, now) == datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    tokyo = CronSchedule(cron="0 9 * * *", timezone="Asia/Tokyo")
    assert next_due(tokyo, NEXT_ANCHOR, now) == datetime(2026, 12, 6, 0, 0, tzinfo=UTC)
