"""Schedules of sources: crontab weekdays mean what they mean in crontab (0 and 7 are Sunday), and an
interval out of range is a config error, not a failure when the service starts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.sources.config import SourcesConfigError, parse_sources
from ingest.sources.schedule import build_trigger

MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # 2024-01-01 was a Monday


def fire_days(cron: str) -> list[str]:
    """The weekdays on which `cron` fires in the week from Monday 2024-01-01, as the service's trigger."""
    trigger = build_trigger(every_s=300, cron=cron, timezone="UTC", jitter_s=0)
    days: list[str] = []
    now = MONDAY
    while (fire := trigger.get_next_fire_time(None, now)) is not None and fire < MONDAY + timedelta(days=7):
        days.append(fire.strftime("%a"))
        now = fire + timedelta(seconds=1)
    return days


@pytest.mark.parametrize(
    ("weekdays", "expected"),
    [
        ("1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0", ["Sun"]),
        ("7", ["Sun"]),
        ("0-2", ["Mon", "Tue", "Sun"]),
        ("5-7", ["Fri", "Sat", "Sun"]),
        ("*/2", ["Tue", "Thu", "Sat", "Sun"]),
        ("1-5/2", ["Mon", "Wed", "Fri"]),
        ("1,3,5", ["Mon", "Wed", "Fri"]),
        ("6,sun", ["Sat", "Sun"]),
    ],
)
def test_numeric_weekdays_count_from_sunday_as_in_crontab(weekdays: str, expected: list[str]) -> None:
    assert fire_days(f"0 9 * * {weekdays}") == expected


@pytest.mark.parametrize("weekdays", ["1/2", "mon-5", "mon-fri/2"])
def test_a_weekday_apscheduler_would_cut_short_is_a_config_error(weekdays: str) -> None:
    """apscheduler reads `mon-5` as Monday and drops the step of `mon-fri/2`: the source would run on
    other days than written, without a word."""
    with pytest.raises(SourcesConfigError, match=r"sources\[0\] \('a'\).*invalid cron"):
        parse_sources([{"name": "a", "kind": "stdin", "cron": f"0 9 * * {weekdays}"}], env={})


def test_every_is_between_a_second_and_366_days() -> None:
    """Below a second a source hammers its origin; a huge interval overflowed when the service built its
    trigger, after the sources file had been accepted."""
    for every in ("1s", "1500ms", "366d"):
        (source,) = parse_sources([{"name": "a", "kind": "stdin", "every": every}], env={}).sources
        build_trigger(every_s=source.interval_s, cron=None, timezone="UTC", jitter_s=0)
    for every in ("1ms", "0.5s", "367d", "99999999999d"):
        with pytest.raises(SourcesConfigError, match=r"every: must be between 1s and 366d"):
            parse_sources([{"name": "a", "kind": "stdin", "every": every}], env={})
