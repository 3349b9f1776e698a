"""Labeler watermarks as pure values: the record's format and checks, and the alert side's input clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from alerts.detector import Detector
from finsent.alert_worker import AlertWorker, PartitionState
from finsent.settings import Settings
from finsent.watermarks import (
    CLOCK_STEP_BACK_S,
    CONTROL_HEADER,
    GROUP_FORGET_AFTER_S,
    MAX_GROUP_CHARS,
    MAX_GROUPS,
    MAX_TOPICS,
    MAX_TOTAL_PARTITIONS,
    MAX_TRACKED_PARTITIONS,
    TOPIC_FORGET_AFTER_S,
    WATERMARK_MAX_AHEAD_S,
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


def _watermark_value(group: str, topics: dict[str, int]) -> bytes:
    return json.dumps({"type": "watermark", "group": group, "topics": topics, "complete": {}}).encode()


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
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/0": 1e999}}', "bad time"),
        (
            b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/0": 1' + b"0" * 400 + b"}}",
            "bad time",
        ),
        (b'{"type": "watermark", "topics": {"raw": 1}, "complete": {"raw/0": 1, "raw/00": 1}}', "more than"),
        (b'{"type": "watermark", "group": 7, "topics": {}, "complete": {}}', "bad group"),
        (b'{"type": "watermark", "topics": {"": 1}, "complete": {}}', "bad topic name"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # too deep for the decoder: not a RecursionError
        (b'{"type": "watermark", "topics": {}, "complete": {}}', "no input topic"),
        # str.isdigit() holds for these, int() fails on them: they must not stop the alert worker
        ('{"type": "watermark", "topics": {"raw": 3}, "complete": {"raw/\u00b2": 1}}'.encode(), "unknown"),
        (
            b'{"type": "watermark", "topics": {"raw": 3}, "complete": {"raw/' + b"0" * 5000 + b'": 1}}',
            "unknown",
        ),
        # one record cannot make a worker track without bound
        (_watermark_value("g" * (MAX_GROUP_CHARS + 1), {"raw": 1}), "group name of 256 characters"),
        (_watermark_value("g", {f"t{i}": 1 for i in range(MAX_TOPICS + 1)}), "10001 input topics"),
        (_watermark_value("g", {"a": MAX_TOTAL_PARTITIONS, "b": 1}), "100001 input partitions"),
        (_watermark_value("g", {"t" * 250: 1}), "bad topic name"),
    ],
)
def test_bad_watermarks_say_what_is_wrong(value: bytes | None, why: str) -> None:
    with pytest.raises(InvalidWatermark, match=why):
        parse_watermark(value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
_partition_names = st.builds(
    lambda t, p: f"{t}/{p}", st.sampled_from(["raw", "news", "r/x"]), st.text(max_size=6)
)


@given(
    topics=st.dictionaries(
        st.sampled_from(["raw", "news", "r/x", ""]), _json | st.integers(-2, 4), max_size=3
    )
    | _json,
    complete=st.dictionaries(_partition_names | st.text(max_size=8), _json | st.floats(), max_size=4) | _json,
    group=st.text(max_size=5) | _json,
)
def test_any_record_is_a_watermark_or_invalid_and_never_breaks_the_clock(
    topics: object, complete: object, group: object
) -> None:
    """Anyone can write a control record into the labeled topic: parse it, take it in and ask the clock,
    and nothing but InvalidWatermark may come out (anything else stops the worker on every replay)."""
    value = json.dumps({"type": "watermark", "topics": topics, "complete": complete, "group": group})
    clock = InputClock()
    try:
        clock.observe(parse_watermark(value.encode()))
    except InvalidWatermark:
        assert clock.complete_at() is None
        return
    at = clock.complete_at()
    assert at is None or isinstance(at, float)


def test_records_under_ever_new_group_names_cannot_grow_the_clock_without_bound() -> None:
    clock = InputClock()
    for i in range(MAX_GROUPS):
        clock.observe(Watermark({"raw": 1}, {("raw", 0): 1.0}, f"g{i}"))
    with pytest.raises(InvalidWatermark, match="group"):
        clock.observe(Watermark({"raw": 1}, {("raw", 0): 1.0}, "one-more"))
    clock.observe(Watermark({"raw": 1}, {("raw", 0): 2.0}, "g0"))  # a known group still counts
    big = InputClock()
    for i in range(MAX_TRACKED_PARTITIONS // MAX_TOTAL_PARTITIONS):
        big.observe(Watermark({"raw": MAX_TOTAL_PARTITIONS}, {("raw", 0): 1.0}, f"g{i}"))
    with pytest.raises(InvalidWatermark, match="partitions tracked"):
        big.observe(Watermark({"raw": 1}, {("raw", 0): 1.0}, "one-more"))
    assert set(big.topics) == {f"g{i}" for i in range(MAX_TRACKED_PARTITIONS // MAX_TOTAL_PARTITIONS)}


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


def test_records_at_the_bounds_are_watermarks() -> None:
    wm = parse_watermark(_watermark_value("g" * MAX_GROUP_CHARS, {f"t{i}": 10 for i in range(MAX_TOPICS)}))
    assert len(wm.topics) == MAX_TOPICS and sum(wm.topics.values()) == MAX_TOTAL_PARTITIONS


def test_the_alert_worker_counts_an_invalid_watermark_and_goes_on() -> None:
    """A record anyone can write into the labeled topic must not stop the worker (its replay would stop
    it again): it is counted, logged and skipped, and what the partition was told stands."""
    settings = Settings(alerts={"idle_clock": "labeler"})
    registry = CollectorRegistry()
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=registry)
    ps = PartitionState(partition=0, detector=Detector(settings.alerts))
    worker._take_watermark(ps, watermark_record("g", {"raw": 1}, {("raw", 0): 550.0})[1], offset=1)
    bad = [None, b"[" * 100_000, _watermark_value("g", {"a": MAX_TOTAL_PARTITIONS + 1})]
    for offset, value in enumerate(bad, start=2):
        worker._take_watermark(ps, value, offset=offset)
    skipped = {"reason": "invalid_watermark"}
    assert registry.get_sample_value("finsent_alert_events_skipped_total", skipped) == len(bad)
    assert ps.inputs.complete_at() == 550.0


def _all(group: str, t: float, partitions: int = 2) -> Watermark:
    """One group's watermark covering every partition of its input topic 'raw' at time `t`."""
    return Watermark({"raw": partitions}, {("raw", p): t for p in range(partitions)}, group)


def test_a_renamed_group_holds_the_windows_only_until_the_new_one_runs_on_past_the_bound() -> None:
    """`pipeline.group_id` renamed: the old group's watermarks stop for good. Its last time holds the
    windows (it might be held, not gone) until the new group's watermarks have moved on by the bound."""
    clock = InputClock()
    clock.observe(_all("old", 1000.0))
    clock.observe(_all("new", 1001.0))
    assert clock.complete_at() == 1000.0
    for t in range(1001, 1001 + int(GROUP_FORGET_AFTER_S), 5):  # the new group's watermark every 5 s
        clock.observe(_all("new", float(t)))
    clock.observe(_all("new", 1000.0 + GROUP_FORGET_AFTER_S))  # exactly the bound past 'old'
    assert clock.complete_at() == 1000.0  # within the bound: still waiting for 'old'
    clock.observe(_all("new", 1001.0 + GROUP_FORGET_AFTER_S + 1))
    assert clock.complete_at() == 1002.0 + GROUP_FORGET_AFTER_S  # the new group alone
    assert set(clock.topics) == {"new"} and {k[0] for k in clock.complete} == {"new"}
    assert {k[0] for k in clock.mentioned} == {"new"} and set(clock.heard) == {"new"}


def test_nothing_is_forgotten_while_every_group_is_silent() -> None:
    """A total outage (every labeler held): no watermark moves any group's time, whatever the wall clock
    does, so the windows stay open however long it lasts."""
    clock = InputClock()
    clock.observe(_all("a", 1000.0))
    clock.observe(_all("b", 900.0))
    # ... hours pass with no watermarks; the first ones after it:
    clock.observe(_all("a", 1000.0))  # a held labeler's stale claim is no time moving on
    assert set(clock.topics) == {"a", "b"} and clock.complete_at() == 900.0


def test_a_group_that_writes_again_counts_again() -> None:
    clock = InputClock()
    clock.observe(_all("a", 1000.0))
    clock.observe(_all("b", 1000.0))
    clock.observe(_all("a", 1000.0 + GROUP_FORGET_AFTER_S + 1))  # 'b' silent for longer than the bound
    assert set(clock.topics) == {"a"}
    # 'b' was held by an outage of its own and comes back with its backlog still to label: it holds the
    # windows again, from its first labeler's watermark (its other partition is unknown until reported)
    clock.observe(Watermark({"raw": 2}, {("raw", 0): 1500.0}, "b"))
    assert clock.complete_at() is None
    clock.observe(Watermark({"raw": 2}, {("raw", 1): 1600.0}, "b"))
    assert clock.complete_at() == 1500.0
    # while it catches up, its times trail the others' by more than the bound, but it is heard from
    clock.observe(_all("a", 1000.0 + 2 * GROUP_FORGET_AFTER_S))
    assert set(clock.topics) == {"a", "b"} and clock.complete_at() == 1500.0


def test_a_lone_group_is_never_forgotten() -> None:
    """With one group, time moves only with its own watermarks: however long it was held, it is waited
    for."""
    clock = InputClock()
    clock.observe(_all("only", 1000.0))
    clock.observe(Watermark({"raw": 2}, {("raw", 0): 1000.0 + 10 * GROUP_FORGET_AFTER_S}, "only"))
    assert clock.complete_at() == 1000.0  # raw/1 still only labeled until 1000
    assert set(clock.topics) == {"only"}


def test_a_group_seen_before_any_time_is_forgotten_too() -> None:
    """A group whose only watermark carried no times (a labeler with nothing sampled yet) names
    partitions that nothing covers; it must not hold the windows for ever either."""
    clock = InputClock()
    clock.observe(Watermark({"raw": 1}, {}, "gone"))
    clock.observe(_all("b", 1000.0))
    assert clock.complete_at() is None
    clock.observe(_all("b", 1000.0 + GROUP_FORGET_AFTER_S + 1))
    assert set(clock.topics) == {"b"} and clock.complete_at() == 1001.0 + GROUP_FORGET_AFTER_S


def test_a_watermark_from_a_clock_far_ahead_is_taken_as_at_most_a_few_minutes_ahead() -> None:
    """One record from a labeler whose clock jumped a year ahead made the input count as complete for a
    year, and, ahead of every other group's time, kept a removed group from ever being forgotten (its
    silence is measured on the labelers' times): the idle windows of quiet partitions were held until
    the alert worker restarted."""
    t0 = 1_700_000_000.0
    wall = [t0]
    clock = InputClock(wall_clock=lambda: wall[0])
    clock.observe(Watermark({"raw": 1}, {("raw", 0): t0}, "old"))
    clock.observe(Watermark({"raw": 1}, {("raw", 0): t0}, "new"))
    clock.observe(Watermark({"raw": 1}, {("raw", 0): t0 + 365 * 86_400}, "new"))  # the glitch
    assert clock.now == t0 + WATERMARK_MAX_AHEAD_S
    clock.observe(Watermark({"raw": 1}, {("raw", 0): t0 + 5}, "old"))  # still alive then; removed now
    for i in range(1, 800):  # 'new' goes on, its clock fixed, for 66 minutes
        wall[0] = t0 + 5 + 5 * i
        clock.observe(Watermark({"raw": 1}, {("raw", 0): wall[0]}, "new"))
    assert set(clock.topics) == {"new"}  # 'old' forgotten after GROUP_FORGET_AFTER_S, as without the glitch
    assert clock.complete_at() == wall[0]


def test_a_labeler_whose_clock_stepped_back_withdraws_the_claims_made_ahead() -> None:
    """A sample taken while the labeler's clock ran a year ahead kept its partition's completeness a year
    ahead for good (times only move forward), so its alert workers never held a window for it again."""
    t0 = 1_700_000_000.0
    progress = InputProgress()
    progress.sample("p", t0 + 365 * 86_400, 100)  # the clock ran ahead
    assert progress.complete("p", 100) == t0 + 365 * 86_400
    progress.sample("p", t0, 150)  # fixed: far below the last sample's time
    assert progress.complete("p", 120) is None  # nothing claimed until written past the new sample
    assert progress.complete("p", 150) == t0
    progress.sample("p", t0 + 1, 150)
    progress.sample("p", t0 + 1 - CLOCK_STEP_BACK_S / 2, 160)  # a small step back is no reset
    assert progress.complete("p", 150) == t0 + 1
