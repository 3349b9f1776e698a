"""Repeated library log lines, let through once a minute each.

kafka-python logs every failed attempt to reach a broker, two or three lines per attempt, and retries
about once a second (`kafka.reconnect_backoff_max_ms`): some 9 lines a second per worker while a broker is
down (tests/test_log_throttle.py counts them). The workers say themselves what an outage means for them;
the library's lines are kept as evidence, one per message template per interval, with a count of those
held back, and with the exception they carry on the line instead of its traceback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

THROTTLE_INTERVAL_S = 60.0
MAX_TEMPLATES = 1_000
"""Templates remembered at most: a library that formats its messages itself (every text distinct) must not
grow the table without bound; past it, templates not seen for an interval are forgotten."""


DECIDED_ATTR = "finsent_throttle_passes"
"""Set on a record once a RepeatThrottle has decided whether it passes."""


class RepeatThrottle(logging.Filter):
    """A handler filter: a record from a logger under one of `prefixes` passes when its (logger, level,
    message template) has not passed in the last `interval_s`; the next one that passes says how many were
    held back meanwhile. Records from other loggers always pass."""

    def __init__(
        self,
        prefixes: tuple[str, ...],
        *,
        interval_s: float = THROTTLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def _watched(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._watched(record.name):
            return True
        # One filter sits on every root handler: the record's first handler decides for all of them (a
        # second decision counted the record twice, dropped it there as a repeat of itself, and added
        # the suffix again)
        decided = record.__dict__.get(DECIDED_ATTR)
        if isinstance(decided, bool):
            return decided
        passes = self._decide(record)
        record.__dict__[DECIDED_ATTR] = passes
        return passes

    def _decide(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            passed_at, held = self._seen.get(key, (None, 0))
            if passed_at is not None and now - passed_at < self.interval_s:
                self._seen[key] = (passed_at, held + 1)
                return False
            if len(self._seen) >= MAX_TEMPLATES:
                self._forget_before(now - self.interval_s)
            self._seen[key] = (now, 0)
        if record.exc_info and record.exc_info[1] is not None:
            # an expected condition (a broker went away): the exception on the line, not its traceback
            error = record.exc_info[1]
            text = f"{type(error).__name__}: {error}"
            if record.args:  # formatted with them later ('%' escaped); without args logging leaves it as is
                text = text.replace("%", "%%")
            record.msg = f"{record.msg} ({text})"
            record.exc_info, record.exc_text = None, None
        if held:
            # no '%' in what is added: the message is formatted with its arguments later
            record.msg = f"{record.msg} [and {held} more like this in the last {self.interval_s:.0f} s]"
        return True

    def _forget_before(self, cutoff: float) -> None:
        stale = [key for key, (passed_at, _) in self._seen.items() if passed_at < cutoff]
        for key in stale:
            del self._seen[key]
        if len(self._seen) >= MAX_TEMPLATES:  # all of them recent: start afresh rather than grow
            self._seen.clear()


def throttle_library_logs(prefixes: tuple[str, ...] = ("kafka",)) -> RepeatThrottle:
    """Install one RepeatThrottle on each handler of the root logger (a filter on the `kafka` logger itself
    would miss its children's records, which propagate to the root's handlers without passing it). A
    second call adds the same filter to handlers added since, and none twice. Returns the filter."""
    root = logging.getLogger()
    found = [
        f
        for handler in root.handlers
        for f in handler.filters
        if isinstance(f, RepeatThrottle) and f.prefixes == prefixes
    ]
    throttle = found[0] if found else RepeatThrottle(prefixes)
    for handler in root.handlers:
        if not any(isinstance(f, RepeatThrottle) and f.prefixes == prefixes for f in handler.filters):
            handler.addFilter(throttle)
    return throttle
