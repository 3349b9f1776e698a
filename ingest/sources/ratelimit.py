"""A token bucket per source, so that a feed or an API is never asked more often than it allows (pure)."""

from __future__ import annotations

import threading


class TokenBucket:
    """`capacity` requests per `per_s` seconds; `reserve(now)` returns how long to wait before sending."""

    def __init__(self, capacity: int, per_s: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / per_s
        self._tokens = float(capacity)
        self._last: float | None = None
        self._lock = threading.Lock()

    def reserve(self, now: float) -> float:
        with self._lock:
            if self._last is not None:
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
