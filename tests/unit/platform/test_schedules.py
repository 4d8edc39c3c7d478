"""When beat publishes a scheduled definition next (the console's "next fire")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from switchyard.platform.schedules import CronSchedule, IntervalSchedule, latest_due, next_due

ANCHOR = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def test_an_interval_fires_next_at_the_first_tick_after_now() -> None:
    every = IntervalSchedule(every_seconds=600)
    now = ANCHOR + timedelta(minutes=25)
    assert next_due(every, ANCHOR, now) == ANCHOR + timedelta(minutes=30)
    # Exactly on a tick: that one is due now (latest_due), the next is one interval on.
    on_tick = ANCHOR + timedelta(minutes=20)
    assert latest_due(every, ANCHOR, on_tick) == on_tick
    assert next_due(every, ANCHOR, on_tick) == ANCHOR + timedelta(minutes=30)
    # Before its anchor (a clock behind): the first tick.
    assert next_due(every, ANCHOR, ANCHOR - timedelta(hours=1)) == ANCHOR + timedelta(minutes=10)


def test_a_cron_fires_next_in_its_own_time_zone() -> None:
    daily = CronSchedule(cron="30 9 * * *", timezone="Europe/Lisbon")
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # Lisbon is on UTC in December
    assert next_due(daily, ANCHOR, now) == datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    tokyo = CronSchedule(cron="0 9 * * *", timezone="Asia/Tokyo")
    assert next_due(tokyo, ANCHOR, now) == datetime(2026, 12, 6, 0, 0, tzinfo=UTC)
