"""Micro-batch assembly bounded by size and by wait time: a small pure state machine (time is passed in)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items; a batch is ready when it is full or its first item has waited `max_wait_s`, and,
    when the consumer of batches is idle (`ready(now, idle=True)`), once its first item has waited
    `linger_s`: a consumer with nothing to do takes a partial batch after that short wait."""

    def __init__(self, max_items: int, max_wait_s: float, linger_s: float = 0.0) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.max_wait_s = max(0.0, max_wait_s)
        self.linger_s = min(self.max_wait_s, max(0.0, linger_s))
        self._items: list[T] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float) -> None:
        if not self._items:
            self._first_at = now
        self._items.append(item)

    def ready(self, now: float, *, idle: bool = False) -> bool:
        left = self.time_left(now, idle=idle)
        return left is not None and left <= 0.0

    def time_left(self, now: float, *, idle: bool = False) -> float | None:
        """Seconds until the pending batch is due (0 when due now); None when empty. `idle`: the
        consumer of batches has nothing to do, so the batch is due after `linger_s`."""
        if not self._items:
            return None
        if len(self._items) >= self.max_items:
            return 0.0
        assert self._first_at is not None
        wait = self.linger_s if idle else self.max_wait_s
        return max(0.0, self._first_at + wait - now)

    def take(self) -> list[T]:
        """Up to `max_items` items, oldest first; the rest stay and keep the earlier deadline."""
        batch, self._items = self._items[: self.max_items], self._items[self.max_items :]
        if not self._items:
            self._first_at = None
        return batch

    def items(self) -> list[T]:
        """The pending items, oldest first (a copy; the batcher keeps them)."""
        return list(self._items)

    def drain(self) -> list[T]:
        """Every pending item, oldest first; the batcher is empty afterwards."""
        items, self._items, self._first_at = self._items, [], None
        return items

    def drop(self, predicate: Callable[[T], bool]) -> int:
        """Forget items matching `predicate` (e.g. from revoked partitions); returns how many."""
        kept = [i for i in self._items if not predicate(i)]
        dropped = len(self._items) - len(kept)
        self._items = kept
        if not kept:
            self._first_at = None
        return dropped


class BusyShare:
    """The share of the last `window_s` seconds the consumer of batches (the model) spent busy, from the
    busy seconds of each batch it finished. Lingering for a fuller batch pays only while this is low: near
    saturation, the time the model would idle while a batch lingers is capacity lost, and queues grow."""

    def __init__(self, window_s: float = 2.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._spans: deque[tuple[float, float]] = deque()  # (finished at, busy seconds)

    def add(self, finished_at: float, busy_s: float) -> None:
        self._spans.append((finished_at, max(0.0, busy_s)))

    def share(self, now: float) -> float:
        start = now - self.window_s
        while self._spans and self._spans[0][0] <= start:
            self._spans.popleft()
        # a span that began before the window counts only its part inside it
        busy = sum(min(seconds, end - start) for end, seconds in self._spans)
        return min(1.0, busy / self.window_s)
