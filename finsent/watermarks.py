"""Labeler watermarks: control records in the labeled topic that say "input read and labeled up to here".

An alert worker whose partition has no events cannot tell a quiet stream from a labeler that has stopped
(Elasticsearch down, a crash loop, a rebalance). Advancing event time with the wall clock then closes
windows before their events are labeled, so a spike in the backlog resolves early and its events arrive
late. So each labeler tells every labeled partition, in band, until when each input partition it owns is
labeled: a watermark covers only messages whose labeled events are acknowledged already, so an alert
worker that reads it has read those events.

The record: key `finsent.watermark`, header `finsent.control: watermark`, JSON value
`{"type": "watermark", "group": ..., "topics": {input topic: partitions}, "complete": {"topic/p": t}}`,
where t (epoch seconds, the labeler's clock) is the latest time by which every message that had arrived in
that input partition is labeled.
Consumers of the labeled topic skip records that carry the `finsent.control` header. Pure functions."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from ingest.topic_names import MAX_TOPIC_CHARS  # Kafka's own limit on a topic name

CONTROL_HEADER = "finsent.control"
WATERMARK = b"watermark"
WATERMARK_KEY = b"finsent.watermark"
TOPIC_FORGET_AFTER_S = 600.0
"""A labeler group's input topic that its watermarks have not named for this long (by the group's own
clock) is no longer waited for: its configuration dropped it."""
GROUP_FORGET_AFTER_S = 3600.0
"""A labeler group not heard from while the other groups' watermarks moved on by this long (by their
clocks, never the alert worker's) is no longer waited for: its `pipeline.group_id` was renamed or its
deployment removed. A held group's watermarks stop too (they queue behind the write it waits on), so
this is also how long a group's own outage holds the windows while another group runs: longer than the
Elasticsearch outages and rolling updates worth waiting through. Past it, that group's windows close and
its backlog arrives late (`reason="late"`); its next watermark makes it count again. A lone group, or
every group held at once, moves no other group's time on, so nothing is forgotten then. Far above the
watermark interval (5 s) and the clock skew between labeler hosts."""
# Bounds on what one record can make a worker track (every partition named is checked on each poll).
MAX_PARTITIONS = 100_000  # per input topic
MAX_TOTAL_PARTITIONS = 100_000  # over all input topics of one record
MAX_TOPICS = 10_000
MAX_GROUP_CHARS = 255  # Kafka sets none for group ids; a longer one is not a configuration
# Bounds on what all records together can make a worker track: forged records under ever new group names
# would otherwise grow the clock (and its check on every poll) without end.
MAX_GROUPS = 100
MAX_TRACKED_PARTITIONS = 200_000  # over all groups
WATERMARK_MAX_AHEAD_S = 300.0
"""A watermark time further ahead of the receiving worker's clock than this is taken as this far ahead:
times only move forward, so one record from a labeler whose clock jumped (a VM restored, a bad NTP step)
would otherwise claim the input complete for as long as the jump, and, ahead of every other group's time,
stop silent groups from ever being forgotten. Far above the clock skew between healthy hosts."""
CLOCK_STEP_BACK_S = 60.0
"""A labeler whose wall clock reads this much below its last sample's time withdraws the partition's
claims (samples and completeness), made with a clock that ran ahead, and starts them over."""


class InvalidWatermark(ValueError):
    """A control record that is not a watermark this version can read."""


def is_control(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a labeled-topic record is a control record (a watermark), not a labeled event."""
    return any(k == CONTROL_HEADER for k, _ in headers or ())


def watermark_record(
    group: str, topics: Mapping[str, int], complete: Mapping[tuple[str, int], float]
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of one watermark: `topics` maps every input topic to its partition count,
    `complete` (topic, partition) to when the sender last saw it read and written to its end."""
    value = {
        "type": "watermark",
        "group": group,
        "topics": dict(topics),
        "complete": {f"{t}/{p}": round(ts, 3) for (t, p), ts in complete.items()},
    }
    return WATERMARK_KEY, json.dumps(value).encode(), [(CONTROL_HEADER, WATERMARK)]


@dataclass(frozen=True)
class Watermark:
    topics: dict[str, int]
    complete: dict[tuple[str, int], float]
    group: str = ""


def parse_watermark(value: bytes | None) -> Watermark:
    """A watermark record's value, checked; InvalidWatermark says what is wrong with it. Any record in the
    labeled topic can claim to be one, so nothing in it may raise anything else (the alert worker skips
    an invalid one; anything else would stop it, and the replay would stop it again)."""
    try:
        obj = json.loads(value) if value is not None else None
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep to decode
        raise InvalidWatermark(f"not JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict) or obj.get("type") != "watermark":
        raise InvalidWatermark("not a watermark object")
    topics, complete, group = obj.get("topics"), obj.get("complete"), obj.get("group", "")
    if not isinstance(topics, dict) or not isinstance(complete, dict):
        raise InvalidWatermark("'topics' and 'complete' must be objects")
    if not isinstance(group, str):
        raise InvalidWatermark(f"bad group {str(group)[:100]}")
    if len(group) > MAX_GROUP_CHARS:
        raise InvalidWatermark(f"group name of {len(group)} characters, more than {MAX_GROUP_CHARS}")
    counts = _partition_counts(topics)
    if len(complete) > sum(counts.values()):
        raise InvalidWatermark(f"'complete' names {len(complete)} partitions, more than 'topics' has")
    times: dict[tuple[str, int], float] = {}
    for name, ts in complete.items():
        topic, _, part = str(name).rpartition("/")
        # ASCII digits only, and few: str.isdigit() is true for "²" and for runs too long for int()
        if topic not in counts or not _is_partition(part) or int(part) >= counts[topic]:
            raise InvalidWatermark(f"'complete' names an unknown partition {name[:300]!r}")
        times[(topic, int(part))] = _time(name, ts)
    return Watermark(counts, times, group)


def _is_partition(text: str) -> bool:
    return 0 < len(text) <= len(str(MAX_PARTITIONS)) and text.isascii() and text.isdigit()


def _partition_counts(topics: dict[str, object]) -> dict[str, int]:
    """The record's input topics and partition counts, within the bounds above."""
    if not topics:
        raise InvalidWatermark("'topics' names no input topic")
    if len(topics) > MAX_TOPICS:
        raise InvalidWatermark(f"{len(topics)} input topics, more than {MAX_TOPICS}")
    counts: dict[str, int] = {}
    for t, n in topics.items():
        if not 0 < len(t) <= MAX_TOPIC_CHARS:
            raise InvalidWatermark(f"bad topic name {t[:100]!r}")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_PARTITIONS:
            raise InvalidWatermark(f"bad partition count for {t!r}: {str(n)[:100]}")
        counts[t] = n
    if sum(counts.values()) > MAX_TOTAL_PARTITIONS:
        raise InvalidWatermark(f"{sum(counts.values())} input partitions, more than {MAX_TOTAL_PARTITIONS}")
    return counts


def _time(name: str, ts: object) -> float:
    """A time, finite and within ±1e18 s: an integer too large for a float would make float() raise."""
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not -1e18 < ts < 1e18:
        raise InvalidWatermark(f"bad time for {name[:300]!r}: {str(ts)[:100]}")
    return float(ts)


@dataclass
class InputClock:
    """What one labeled partition has been told: until when every input partition is read and labeled.
    Per labeler group (several deployments may write one labeled topic), the partitions of all input
    topics in its latest watermark must be covered; until each has been reported (by whichever labeler
    owns it), the input's completeness is unknown. A group that is gone for good (renamed, removed) is
    forgotten once the other groups' watermarks have moved on GROUP_FORGET_AFTER_S past the last one it
    sent; it counts again from its next watermark. Times more than WATERMARK_MAX_AHEAD_S ahead of this
    worker's clock are taken as that far ahead. Not saved: a restarted worker starts over."""

    topics: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> input topic -> partitions
    complete: dict[tuple[str, str, int], float] = field(default_factory=dict)  # (group, topic, p) -> time
    mentioned: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, topic) -> group time
    now: float | None = None  # the latest time any group's watermark carried
    heard: dict[str, float] = field(default_factory=dict)  # group -> `now` when its last watermark came
    wall_clock: Callable[[], float] = time.time  # bounds the times taken in (WATERMARK_MAX_AHEAD_S)

    def observe(self, wm: Watermark) -> None:
        """Take a watermark in; times only move forward. A group's input topics and partition counts only
        grow with one record: during a rolling update, labelers of the old configuration (one topic fewer,
        or metadata from before partitions were added) must not make the others' partitions count as
        covered. A topic the group's watermarks have not named for TOPIC_FORGET_AFTER_S of the group's
        own time (the configuration dropped it) is forgotten, and so is a group that has been silent for
        GROUP_FORGET_AFTER_S of the others' time."""
        g = wm.group
        self._check_bounds(wm)
        counts = self.topics.setdefault(g, {})
        limit = self.wall_clock() + WATERMARK_MAX_AHEAD_S
        complete = {tp: min(ts, limit) for tp, ts in wm.complete.items()}
        group_now = max(complete.values(), default=None)
        for topic, n in wm.topics.items():
            counts[topic] = max(n, counts.get(topic, 0))
            if group_now is not None:
                self.mentioned[(g, topic)] = max(group_now, self.mentioned.get((g, topic), group_now))
        for (topic, p), ts in complete.items():
            self.complete[(g, topic, p)] = max(ts, self.complete.get((g, topic, p), ts))
        if group_now is not None:
            self._forget_dropped_topics(g, group_now)
            self.now = group_now if self.now is None else max(self.now, group_now)
        self._forget_silent_groups(g)

    def _check_bounds(self, wm: Watermark) -> None:
        """InvalidWatermark, before anything is taken in, for a record that would make the clock track
        more than MAX_GROUPS groups or MAX_TRACKED_PARTITIONS partitions."""
        if wm.group not in self.topics and len(self.topics) >= MAX_GROUPS:
            raise InvalidWatermark(f"a labeler group more than the {MAX_GROUPS} already tracked")
        own = self.topics.get(wm.group, {})
        grown = sum(max(0, n - own.get(t, 0)) for t, n in wm.topics.items())
        tracked = sum(sum(counts.values()) for counts in self.topics.values())
        if tracked + grown > MAX_TRACKED_PARTITIONS:
            raise InvalidWatermark(f"more than {MAX_TRACKED_PARTITIONS} input partitions tracked in all")

    def _forget_dropped_topics(self, g: str, group_now: float) -> None:
        stale = [
            t
            for t in self.topics[g]
            if group_now - self.mentioned.get((g, t), group_now) > TOPIC_FORGET_AFTER_S
        ]
        for topic in stale:
            del self.topics[g][topic]
            self.mentioned.pop((g, topic), None)
            self.complete = {k: ts for k, ts in self.complete.items() if k[:2] != (g, topic)}

    def _forget_silent_groups(self, g: str) -> None:
        """`g` was just heard from; forget the groups that have not been while the labelers' time moved on
        by GROUP_FORGET_AFTER_S. Time moves only with watermarks (the labelers' clocks, not ours), so a
        lone group, or every group held at once, forgets nothing. A group seen before any watermark carried
        a time counts as heard when the first one does."""
        if self.now is None:
            return
        self.heard[g] = self.now
        now = self.now
        silent = [h for h in self.topics if now - self.heard.setdefault(h, now) > GROUP_FORGET_AFTER_S]
        for h in silent:
            self._forget_group(h)

    def _forget_group(self, g: str) -> None:
        del self.topics[g]
        self.heard.pop(g, None)
        self.mentioned = {k: ts for k, ts in self.mentioned.items() if k[0] != g}
        self.complete = {k: ts for k, ts in self.complete.items() if k[0] != g}

    def complete_at(self) -> float | None:
        """Until when the whole input is read and labeled; None while any input partition is unreported."""
        if not self.topics:
            return None
        keys = [(g, t, p) for g, counts in self.topics.items() for t, n in counts.items() for p in range(n)]
        times = [self.complete.get(k) for k in keys]
        if not times or any(ts is None for ts in times):
            return None
        return min(ts for ts in times if ts is not None)


@dataclass
class InputProgress:
    """The labeler's side: until when each input partition is read and written. Once a second the log end
    of each owned partition is sampled with the wall time; once the partition is written past a sample's
    end, every message that had arrived by the sample's time is labeled. A busy partition is never read
    to its end at any one moment, yet its completeness still trails the wall clock by about the pipeline's
    latency; a stopped or held pipeline writes nothing, so its completeness stays where it was."""

    max_samples: int = 3600
    samples: dict[Hashable, deque[tuple[float, int]]] = field(default_factory=dict)
    reached: dict[Hashable, float] = field(default_factory=dict)

    def sample(self, tp: Hashable, wall: float, end: int) -> None:
        """Record that `tp`'s log ended at `end` at `wall`. A log that has not grown only moves its last
        sample's time (a stronger claim for the same offset), so a quiet partition keeps one sample. A
        reading below the last one can only be stale (a log does not shrink): it is ignored, since moving
        the time on would claim the records after it. A wall time CLOCK_STEP_BACK_S below the last
        sample's means the clock ran ahead when that was taken: the partition's claims start over."""
        q = self.samples.setdefault(tp, deque(maxlen=self.max_samples))
        if q and wall < q[-1][0] - CLOCK_STEP_BACK_S:  # claims made with a clock that ran ahead
            q.clear()
            self.reached.pop(tp, None)
        if q and end < q[-1][1]:
            return
        if q and end == q[-1][1]:
            q[-1] = (max(wall, q[-1][0]), end)
        else:
            q.append((wall, end))

    def complete(self, tp: Hashable, written: int | None) -> float | None:
        """Until when `tp` is complete, now that everything before offset `written` is written."""
        q = self.samples.get(tp)
        if q and written is not None and q[0][1] <= written:
            while len(q) > 1 and q[1][1] <= written:
                q.popleft()  # the latest sample reached stays first: it moves on while quiet
            self.reached[tp] = max(q[0][0], self.reached.get(tp, q[0][0]))
        return self.reached.get(tp)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Drop partitions this labeler no longer owns (another one reports them now)."""
        for tp in tps:
            self.samples.pop(tp, None)
            self.reached.pop(tp, None)
