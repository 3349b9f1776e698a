"""Blocking work on a thread of its own, waited for in slices so that a stop can give up on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """`work()` on a daemon thread of its own, waited for in short slices, so that the thread waiting can
    give up on it when a stop is asked for (a signal handler runs in that thread between the slices; the
    kafka-python calls that wait, bootstrap and flush, cannot be interrupted themselves). Work given up
    on is left to end by itself, its outcome dropped."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._work = work
        self._outcome: list[tuple[bool, Any]] = []
        self._done = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._outcome.append((True, self._work()))
        except BaseException as e:  # raised again by result(), in the thread that waits
            self._outcome.append((False, e))
        finally:
            self._done.set()

    def wait(
        self,
        timeout_s: float | None = None,
        *,
        unless: Callable[[], bool] | None = None,
        slice_s: float = 0.1,
    ) -> bool:
        """True once the work has ended; False when `timeout_s` passed or `unless()` turned true first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if unless is not None and unless():
                return self._done.is_set()
            left = slice_s if deadline is None else min(slice_s, deadline - time.monotonic())
            if left <= 0:
                return self._done.is_set()
            if self._done.wait(left):
                return True

    def result(self) -> T:
        """What the work returned, or its exception raised here (only once it has ended)."""
        ok, value = self._outcome[0]
        if not ok:
            raise value
        result: T = value
        return result
