"""Schedules of sources: parsing of intervals and crontabs, and the apscheduler trigger for a source.

Parsing is pure and runs when the sources file is validated, so a bad schedule is a config error at start-up
rather than a job that never runs."""

from __future__ import annotations

import re
import reprlib
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

# Bounds of `every`: a shorter interval hammers the origin, a longer one is a typo that overflows the
# trigger's date arithmetic when the service starts.
MIN_EVERY_S = 1.0
MAX_EVERY_S = 366 * 86400.0

# Crontab numbers weekdays from Sunday (0, and 7 too); apscheduler numbers them from Monday, but both
# read the same names, so crontab numbers are handed over as names.
_CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NUMERIC_DAYS = re.compile(r"(?:(?P<all>\*)|(?P<first>\d+)(?:-(?P<last>\d+))?)(?:/(?P<step>\d+))?")
_NAMED_DAYS = re.compile(r"[a-z]+(?:-[a-z]+)?", re.IGNORECASE)


def parse_duration(value: Any) -> float:
    """Seconds of an interval from a number or a string like '90', '30s', '5m', '1.5h', '1d', between
    1 s and 366 days: anything else is a typo better reported at start-up than run."""
    seconds = _seconds(value)
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise ValueError(f"must be between 1s and 366d, got {reprlib.repr(value)}")
    return seconds


def _seconds(value: Any) -> float:
    """Seconds from a number or a duration string, unchecked."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return float("inf")
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h)")
        return float(m.group(1)) * _UNIT_S[m.group(2)]
    raise ValueError(f"not a duration: {value!r}")


def parse_cron(expr: str, timezone: str) -> CronTrigger:
    """A CronTrigger from a 5-field crontab, weekdays numbered as crontab does; raises ValueError with the
    reason."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r} must have 5 fields (minute hour day month weekday)")
    try:
        fields[4] = crontab_weekdays(fields[4])
        return CronTrigger.from_crontab(" ".join(fields), timezone=timezone)
    except (ValueError, LookupError) as e:
        raise ValueError(f"invalid cron {expr!r} / timezone {timezone!r}: {e}") from None


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field in apscheduler's terms: each numeric part (`1-5`, `0,6`, `*/2`) becomes the
    names of the days it selects, since apscheduler would read its numbers as Monday-based; names and a
    lone `*` mean the same to both and are left as they are. Raises ValueError for a part that is neither,
    which apscheduler would otherwise cut short without a word (`mon-5` as Monday)."""
    if field == "*":
        return field
    days: set[int] = set()
    names: list[str] = []
    for part in field.split(","):
        m = _NUMERIC_DAYS.fullmatch(part)
        if m:
            days |= _crontab_days(m)
        elif _NAMED_DAYS.fullmatch(part):
            names.append(part)  # apscheduler checks the spelling
        else:
            raise ValueError(
                f"weekday {part!r} is neither numbers (0-7, 0 and 7 are Sunday) nor names (mon-fri)"
            )
    if not days:
        return field
    return ",".join([_CRONTAB_DAYS[d] for d in sorted(days)] + names)


def _crontab_days(m: re.Match[str]) -> set[int]:
    """The days (0 = Sunday) of one numeric part of a crontab weekday field; raises ValueError."""
    step = int(m["step"] or 1)
    if m["all"]:
        first, last = 0, 6
    elif m["step"] and not m["last"]:
        raise ValueError(f"weekday step needs a range or '*', e.g. 1-5/2, got {m[0]!r}")
    else:
        first = int(m["first"])
        last = int(m["last"] or first)
    if last > 7 or first > last or step < 1:
        raise ValueError(
            f"weekday {m[0]!r} is not a range of 0-7 (0 and 7 are Sunday) with a step of 1 or more"
        )
    return {day % 7 for day in range(first, last + 1, step)}


def build_trigger(*, every_s: float, cron: str | None, timezone: str, jitter_s: float) -> BaseTrigger:
    """The trigger of a source: cron if set, else a fixed interval; jitter spreads load on the origin."""
    jitter = round(jitter_s) or None
    if cron is not None:
        trigger = parse_cron(cron, timezone)
        trigger.jitter = jitter
        return trigger
    return IntervalTrigger(seconds=every_s, jitter=jitter, timezone=timezone)
