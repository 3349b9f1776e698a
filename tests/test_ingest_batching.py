"""The micro-batch state machine: ready when full or when the oldest item has waited long enough."""

from __future__ import annotations

from ingest.batching import Batcher


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
