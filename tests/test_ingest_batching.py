"""The micro-batch state machine: ready when full or when the oldest item has waited long enough."""

from __future__ import annotations

from ingest.batching import Batcher, BusyShare


def test_ready_when_full() -> None:
    b: Batcher[int] = Batcher(3, 10.0)
    for i in range(2):
        b.add(i, now=0.0)
    assert not b.ready(0.0) and b.time_left(0.0) == 10.0
    b.add(2, now=0.1)
    assert b.ready(0.1) and b.time_left(0.1) == 0.0
    assert b.take() == [0, 1, 2]
    assert len(b) == 0 and not b.ready(100.0) and b.time_left(100.0) is None


def test_ready_after_wait_from_first_item() -> None:
    b: Batcher[str] = Batcher(100, 0.2)
    b.add("a", now=1.0)
    b.add("b", now=1.15)
    assert not b.ready(1.19)
    assert abs((b.time_left(1.1) or 0) - 0.1) < 1e-9
    assert b.ready(1.21)
    assert b.take() == ["a", "b"]


def test_take_leaves_overflow_with_the_old_deadline() -> None:
    b: Batcher[int] = Batcher(2, 5.0)
    for i in range(5):
        b.add(i, now=0.0)
    assert b.take() == [0, 1]
    assert b.ready(0.0)
    assert b.take() == [2, 3]
    assert not b.ready(1.0) and b.ready(5.0)
    assert b.take() == [4]


def test_drop_forgets_matching_items() -> None:
    b: Batcher[int] = Batcher(10, 1.0)
    for i in range(6):
        b.add(i, now=0.0)
    assert b.drop(lambda i: i % 2 == 0) == 3
    assert b.take() == [1, 3, 5]
    b.add(9, now=0.0)
    assert b.drop(lambda _: True) == 1 and b.time_left(0.0) is None


def test_zero_wait_is_ready_at_once() -> None:
    b: Batcher[int] = Batcher(10, 0.0)
    b.add(1, now=3.0)
    assert b.ready(3.0)


def test_drain_returns_everything() -> None:
    b: Batcher[int] = Batcher(2, 1.0)
    for i in range(3):
        b.add(i, now=0.0)
    assert b.drain() == [0, 1, 2]
    assert len(b) == 0 and b.time_left(0.0) is None


def test_idle_consumer_takes_a_partial_batch_after_the_linger() -> None:
    b: Batcher[int] = Batcher(10, 0.2, linger_s=0.05)
    b.add(1, now=1.0)
    assert not b.ready(1.01, idle=True) and abs((b.time_left(1.01, idle=True) or 0) - 0.04) < 1e-9
    assert b.ready(1.05, idle=True)
    assert not b.ready(1.05)  # busy: the batch waits up to max_wait_s
    assert b.ready(1.2)


def test_linger_zero_takes_at_once_when_idle_and_never_exceeds_max_wait() -> None:
    at_once: Batcher[int] = Batcher(10, 0.2)
    at_once.add(1, now=0.0)
    assert at_once.ready(0.0, idle=True) and not at_once.ready(0.0)
    capped: Batcher[int] = Batcher(10, 0.1, linger_s=5.0)
    assert capped.linger_s == 0.1
    capped.add(1, now=0.0)
    assert capped.ready(0.1, idle=True)
    full: Batcher[int] = Batcher(1, 1.0, linger_s=0.5)
    full.add(1, now=0.0)
    assert full.ready(0.0, idle=True)


def test_busy_share_counts_the_busy_seconds_inside_its_window() -> None:
    busy = BusyShare(window_s=2.0)
    assert busy.share(0.0) == 0.0
    busy.add(1.0, 0.5)
    busy.add(1.8, 0.3)
    assert abs(busy.share(2.0) - 0.4) < 1e-9
    assert abs(busy.share(3.5) - 0.15) < 1e-9  # the first span ended before the window: gone
    busy.add(10.0, 5.0)  # longer than the window: only its part inside it counts
    assert busy.share(10.0) == 1.0 and abs(busy.share(11.0) - 0.5) < 1e-9
    assert busy.share(12.0) == 0.0
