"""Timestamps from feeds, APIs and files, normalised to UTC and written as RFC 3339."""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC, datetime, tzinfo
from typing import Any

# Unix timestamps above this are taken to be milliseconds (year 2286 in seconds).
_MS_THRESHOLD = 10_000_000_000
# Longer digit strings are no timestamp (and int() refuses over 4300 digits).
_MAX_DIGITS = 20


def parse_time(value: Any, naive_zone: tzinfo = UTC) -> datetime | None:
    """A timezone-aware UTC datetime from RFC 3339 / ISO 8601, RFC 822 (RSS) or Unix seconds/ms; None if
    the value is missing or not understood. A time without a zone is read in `naive_zone` (a source's
    `dates_timezone`; UTC by default)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _unix(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return _unix(int(text)) if len(text) <= _MAX_DIGITS else None
    dt = _iso(text) or _rfc822(text)
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=naive_zone)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00
        return None


def _unix(value: float) -> datetime | None:
    try:
        if not math.isfinite(value) or value < 0:
            return None
        seconds = value / 1000.0 if value > _MS_THRESHOLD else float(value)
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):  # an integer too big for a float, or past year 9999
        return None


def _iso(text: str) -> datetime | None:
    candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        return None


# Zone names feeds use that email.utils does not know (it knows UT, UTC, GMT, Z and the US zones), read
# as UTC: a CEST time was published two hours late. Ambiguous names (IST, BST) stay unknown.
_ZONES = {
    "WET": 0, "WEST": 1, "CET": 1, "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "HKT": 8, "SGT": 8, "AWST": 8, "JST": 9, "KST": 9, "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13,
}  # fmt: skip


_COMMENT = re.compile(r"\([^()]*\)")  # the "(CET)" of "+0100 (CET)"
_OFFSET = re.compile(r"(?:\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)?[+-]\d{4}")  # "+0100", or glued to the time
_NAMED_OFFSET = re.compile(r"(?:GMT|UTC?)?([+-]\d\d:?\d\d)")
_UTC_NAMES = frozenset({"ETC/UTC", "ETC/GMT", "ETC/UCT", "ETC/ZULU", "UTC+0", "UTC-0", "GMT+0", "GMT-0"})
_NO_ZONE = re.compile(r"[\d:.]+")  # a date ending in its time (or, as asctime writes it, its year)


def _rfc822(text: str) -> datetime | None:
    """An RFC 822 date; None when its zone is neither a ±hhmm offset nor a name known here or to
    email.utils (better no time than one hours off). A date without a zone is naive; -0000 is UTC."""
    words = _COMMENT.sub(" ", text).split()
    if not words:
        return None
    words[-1] = _zone_word(words[-1])
    try:
        dt = email.utils.parsedate_to_datetime(" ".join(words))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if not _zone_read(words[-1], dt):
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None and words[-1] == "-0000" else dt  # RFC 5322: UTC


def _zone_word(word: str) -> str:
    """A date's last word as email.utils reads it, where it says a zone email.utils does not know: a name
    of _ZONES, an ISO 8601 offset (`+01:00`), an offset after GMT or UTC (`GMT+0100`, as JavaScript writes
    dates; `UTC+01:00`), UTC by another name (`Etc/UTC`, `UTC+0`). `GMT+1` stays as it is: POSIX reads
    it an hour west."""
    upper = word.upper()
    if upper in _ZONES:
        return f"+{_ZONES[upper]:02d}00"
    if upper in _UTC_NAMES:
        return "+0000"
    offset = _NAMED_OFFSET.fullmatch(upper)
    if offset is not None:
        return offset.group(1).replace(":", "")
    return word


def _zone_read(zone: str, dt: datetime) -> bool:
    """Whether email.utils read `zone` (a date's last word) for what it is. It reads a zone it does not
    know (`GMT+0100`, `Europe/Paris`) as no zone, and `+1` as one minute east."""
    if dt.tzinfo is not None:
        return zone.isalpha() or _OFFSET.fullmatch(zone) is not None
    return zone == "-0000" or _NO_ZONE.fullmatch(zone) is not None


def format_time(dt: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, second precision unless there are microseconds."""
    dt = dt.astimezone(UTC)
    spec = "seconds" if dt.microsecond == 0 else "milliseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")
