"""Labeler watermarks as pure values: the record's format and checks, and the alert side's input clock."""

from __future__ import annotations

import pytest

from finsent.watermarks import (
    CONTROL_HEADER,
    TOPIC_FORGET_AFTER_S,
    InputClock,
    InputProgress,
    InvalidWatermark,
    Watermark,
    is_control,
    parse_watermark,
    watermark_record,
)


def test_a_record_round_trips_and_is_marked_as_control() -> None:
    key, value, headers = watermark_record("labelers", {"raw": 2}, {("raw", 0): 100.25, ("raw", 1): 99.0})
    assert key == b"finsent.watermark"
    assert is_control(headers) and (CONTROL_HEADER, b"watermark") in headers
    assert not is_control([("finsent.reason", b"x")]) and not is_control(None)
    wm = parse_watermark(value)
    assert wm == Watermark({"raw": 2}, {("raw", 0): 100.25, ("raw", 1): 99.0}, "labelers")


def test_topic_names_with_slashes_parse() -> None:
    _, value, _ = watermark_record("g", {"a/b": 1}, {("a/b", 0): 5.0})
    assert parse_watermark(value).complete == {("a/b", 0): 5.0}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "not a watermark"),
        (b"{not json", "not JSON"),
        (b'{"type": "event"}', "not a watermark"),
        (b'{"type": "watermark", "topics": [], "complete": {}}', "must be objects"),
        (b'{"type": "watermark", "topics": {"raw": 0}, "complete": {}}', "partition count"),
        (b'{"type": "watermark", "topics": {"raw": true}, "complete": {}}', "partition count"),
        (b'{"type": "watermark", "topics": {"raw": 10000000}, "complete": {}}', "partition count"),
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/1": 1}}', "unknown partition"),
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"other/0": 1}}', "unknown partition"),
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/x": 1}}', "unknown partition"),
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/0": NaN}}', "bad time"),
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/0": "soon"}}', "bad time"),
    ],
)
def test_bad_watermarks_say_what_is_wrong(value: bytes | None, why: str) -> None:
    with pytest.raises(InvalidWatermark, match=why):
        parse_watermark(value)


def test_the_input_is_complete_only_once_every_partition_is_reported() -> None:
    clock = InputClock()
    assert clock.complete_at() is None
    clock.observe(Watermark({"raw": 2, "news": 1}, {("raw", 0): 100.0}))  # one labeler's partitions
    assert clock.complete_at() is None
    clock.observe(Watermark({"raw": 2, "news": 1}, {("raw", 1): 90.0, ("news", 0): 120.0}))  # another's
    assert clock.complete_at() == 90.0  # the partition furthest behind
    clock.observe(Watermark({"raw": 2, "news": 1}, {("raw", 1): 80.0}))  # an older one, read late
    assert clock.complete_at() == 90.0
    clock.observe(Watermark({"raw": 2, "news": 1}, {("raw", 1): 130.0}))
    assert clock.complete_at() == 100.0


def test_input_topics_only_grow_until_the_group_stops_naming_one() -> None:
    clock = InputClock()
    clock.observe(Watermark({"raw": 2, "old": 1}, {("raw", 0): 50.0, ("raw", 1): 60.0, ("old", 0): 10.0}))
    assert clock.complete_at() == 10.0
    # a labeler still on the previous configuration (one topic fewer, stale partition count): no jump
    clock.observe(Watermark({"raw": 1}, {("raw", 0): 70.0}))
    assert clock.complete_at() == 10.0
    clock.observe(Watermark({"raw": 3, "old": 1}, {("raw", 0): 80.0}))  # partitions added: unknown for now
    assert clock.complete_at() is None
    # the configuration dropped 'old': once the group's own clock is past its last mention by the limit
    later = 81.0 + TOPIC_FORGET_AFTER_S
    clock.observe(Watermark({"raw": 3}, {("raw", p): later for p in range(3)}))
    assert clock.complete_at() == later
    assert {k[1] for k in clock.complete} == {"raw"}


def test_a_busy_partition_is_complete_up_to_the_last_sample_written_past() -> None:
    progress = InputProgress()
    assert progress.complete("p", 0) is None
    for second in range(10):  # the log grows by 100 a second; the labeler is ~1.5 s behind
        progress.sample("p", 1000.0 + second, 100 * (second + 1))
    assert progress.complete("p", 850) == 1007.0  # the log ended at 800 at 1007, at 900 at 1008
    assert progress.complete("p", None) == 1007.0  # nothing new written: the claim stands
    assert progress.complete("p", 800) == 1007.0  # never moves back


def test_a_quiet_partition_moves_on_with_its_samples_and_a_held_one_does_not() -> None:
    progress = InputProgress()
    progress.sample("quiet", 10.0, 5)
    progress.sample("quiet", 11.0, 5)
    assert progress.complete("quiet", 5) == 11.0
    progress.sample("quiet", 12.0, 5)
    assert progress.complete("quiet", 5) == 12.0
    progress.sample("held", 10.0, 5)
    progress.sample("held", 11.0, 8)  # three messages came and are not written (an output outage)
    progress.sample("held", 12.0, 8)
    assert progress.complete("held", 5) == 10.0
    assert len(progress.samples["quiet"]) == 1 and len(progress.samples["held"]) == 2
    progress.sample("held", 13.0, 6)  # a stale reading (a fetch's old highwater): it claims nothing
    assert progress.complete("held", 6) == 10.0 and list(progress.samples["held"])[-1] == (12.0, 8)


def test_forgotten_partitions_start_over() -> None:
    progress = InputProgress(max_samples=2)
    for second in range(5):
        progress.sample("p", float(second), second)
    assert list(progress.samples["p"]) == [(3.0, 3), (4.0, 4)]  # bounded
    assert progress.complete("p", 4) == 4.0
    progress.forget(["p"])
    assert progress.complete("p", 4) is None


def test_each_labeler_group_must_cover_its_own_input() -> None:
    """Two deployments writing one labeled topic: one's watermarks never stand in for the other's."""
    clock = InputClock()
    clock.observe(Watermark({"news": 1}, {("news", 0): 100.0}, "news-labelers"))
    assert clock.complete_at() == 100.0
    clock.observe(Watermark({"social": 2}, {("social", 0): 500.0}, "social-labelers"))
    assert clock.complete_at() is None  # social/1 unreported
    clock.observe(Watermark({"social": 2}, {("social", 1): 400.0}, "social-labelers"))
    assert clock.complete_at() == 100.0  # news is still only labeled until 100
    clock.observe(Watermark({"news": 1}, {("news", 0): 450.0}, "news-labelers"))
    assert clock.complete_at() == 400.0
