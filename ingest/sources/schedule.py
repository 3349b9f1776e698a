"""Schedules of sources: parsing of intervals and crontabs, and the apscheduler trigger for a source.

Parsing is pure and runs when the sources file is validated, so a bad schedule is a config error at start-up
rather than a job that never runs."""

from __future__ import annotations

import re
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like '90', '30s', '5m', '1.5h', '1d'; must be positive."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h)")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_cron(expr: str, timezone: str) -> CronTrigger:
    """A CronTrigger from a 5-field crontab; raises ValueError with the reason."""
    if len(expr.split()) != 5:
        raise ValueError(f"cron {expr!r} must have 5 fields (minute hour day month weekday)")
    try:
        return CronTrigger.from_crontab(expr, timezone=timezone)
    except (ValueError, LookupError) as e:
        raise ValueError(f"invalid cron {expr!r} / timezone {timezone!r}: {e}") from None


def build_trigger(*, every_s: float, cron: str | None, timezone: str, jitter_s: float) -> BaseTrigger:
    """The trigger of a source: cron if set, else a fixed interval; jitter spreads load on the origin."""
    jitter = round(jitter_s) or None
    if cron is not None:
        trigger = parse_cron(cron, timezone)
        trigger.jitter = jitter
        return trigger
    return IntervalTrigger(seconds=every_s, jitter=jitter, timezone=timezone)
