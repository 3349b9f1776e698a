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
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

CONTROL_HEADER = "finsent.control"
WATERMARK = b"watermark"
WATERMARK_KEY = b"finsent.watermark"
TOPIC_FORGET_AFTER_S = 600.0
"""A labeler group's input topic that its watermarks have not named for this long (by the group's own
clock) is no longer waited for: its configuration dropped it."""
MAX_PARTITIONS = 100_000  # per input topic: a bound on what one record can make a worker track


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
    """A watermark record's value, checked; InvalidWatermark says what is wrong with it."""
    try:
        obj = json.loads(value) if value is not None else None
    except ValueError as e:
        raise InvalidWatermark(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("type") != "watermark":
        raise InvalidWatermark("not a watermark object")
    topics, complete, group = obj.get("topics"), obj.get("complete"), obj.get("group", "")
    if not isinstance(topics, dict) or not isinstance(complete, dict):
        raise InvalidWatermark("'topics' and 'complete' must be objects")
    if not isinstance(group, str):
        raise InvalidWatermark(f"bad group {group!r}")
    counts: dict[str, int] = {}
    for t, n in topics.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_PARTITIONS:
            raise InvalidWatermark(f"bad partition count for {t!r}: {n!r}")
        counts[t] = n
    times: dict[tuple[str, int], float] = {}
    for name, ts in complete.items():
        topic, _, part = str(name).rpartition("/")
        if topic not in counts or not part.isdigit() or int(part) >= counts[topic]:
            raise InvalidWatermark(f"'complete' names an unknown partition {name!r}")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise InvalidWatermark(f"bad time for {name!r}: {ts!r}")
        times[(topic, int(part))] = float(ts)
    return Watermark(counts, times, group)


@dataclass
class InputClock:
    """What one labeled partition has been told: until when every input partition is read and labeled.
    Per labeler group (several deployments may write one labeled topic), the partitions of all input
    topics in its latest watermark must be covered; until each has been reported (by whichever labeler
    owns it), the input's completeness is unknown. A group that is gone for good keeps its last times
    until the worker restarts (these are not saved)."""

    topics: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> input topic -> partitions
    complete: dict[tuple[str, str, int], float] = field(default_factory=dict)  # (group, topic, p) -> time
    mentioned: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, topic) -> group time

    def observe(self, wm: Watermark) -> None:
        """Take a watermark in; times only move forward. A group's input topics and partition counts only
        grow with one record: during a rolling update, labelers of the old configuration (one topic fewer,
        or metadata from before partitions were added) must not make the others' partitions count as
        covered. A topic the group's watermarks have not named for TOPIC_FORGET_AFTER_S of the group's
        own time (the configuration dropped it) is forgotten."""
        g = wm.group
        counts = self.topics.setdefault(g, {})
        group_now = max(wm.complete.values(), default=None)
        for topic, n in wm.topics.items():
            counts[topic] = max(n, counts.get(topic, 0))
            if group_now is not None:
                self.mentioned[(g, topic)] = max(group_now, self.mentioned.get((g, topic), group_now))
        for (topic, p), ts in wm.complete.items():
            self.complete[(g, topic, p)] = max(ts, self.complete.get((g, topic, p), ts))
        if group_now is not None:
            self._forget_dropped_topics(g, group_now)

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

    def complete_at(self) -> float | None:
        """Until when the whole input is read and labeled; None while any input partition is unreported."""
        if not self.topics:
            return None
        keys = [(g, t, p) for g, counts in self.topics.items() for t, n in counts.items() for p in range(n)]
        times = [self.complete.get(k) for k in keys]
        return None if any(ts is None for ts in times) else min(ts for ts in times if ts is not None)


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
        the time on would claim the records after it."""
        q = self.samples.setdefault(tp, deque(maxlen=self.max_samples))
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
