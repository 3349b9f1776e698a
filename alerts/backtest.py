"""Replay a file of labeled events through the detector: which alerts would have fired, and the per-key
series (share vs baseline, volume) an analyst needs to tune thresholds before going live.

The replay mirrors the live worker: one detector per partition of the labeled topic (a key's windows close
with its partition's event time, and only the keys of one partition are corrected for multiple testing
together), and an event dated more than `max_future_s` ahead of when it was labeled is counted at that time,
as the worker clamps it to its wall clock. Exports are rarely in event-time order (newest first, one
partition after another), and the detector drops what comes after its window closed, so by default the
events are replayed sorted by time."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.config import AlertSettings
from alerts.detector import ACCEPTED, IGNORED, LATE, Detector, WindowStat
from alerts.events import InvalidEvent, LabeledEvent, alert_keys_of, labeled_time, parse_event
from alerts.model import Alert

DEFAULT_PARTITIONS = 6
"""Partitions of the labeled topic as deployed (`finsent.labeled` in deploy/k8s/kafka-topics.yaml)."""
LATE_WARN_SHARE = 0.02
"""Above this share of late key-events the replay is not what the live worker would have seen: say so."""

Route = Callable[[str], int]
"""Key id (`<key_type>:<key>`, the labeled record's key) -> the partition whose detector counts it."""


def one_partition(key_id: str) -> int:
    """Every key in one detector (a labeled topic of one partition)."""
    return 0


@dataclass(frozen=True, slots=True)
class Replayed:
    """One usable line: its event, and when the pipeline labeled it (about when the live worker got it)."""

    lineno: int
    event: LabeledEvent
    labeled_at: float | None = None

    def replay_time(self, max_future_s: float) -> float:
        """The time the live worker counts the event at: its own, or `labeled_at` when it is dated further
        ahead of that than `max_future_s` (`Detector.add` clamps it to the wall clock the same way)."""
        ts, now = self.event.ts, self.labeled_at
        return now if now is not None and ts > now + max_future_s else ts


@dataclass
class BacktestResult:
    alerts: list[Alert] = field(default_factory=list)
    stats: list[WindowStat] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    invalid: list[tuple[int, str]] = field(default_factory=list)

    def series(self, key_id: str) -> list[WindowStat]:
        return [s for s in self.stats if f"{s.key_type}:{s.key}" == key_id]

    def alerted_keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for a in self.alerts:
            seen.setdefault(f"{a.key_type}:{a.key}", None)
        return list(seen)

    def key_events(self) -> int:
        """Events given to the detectors: one per message and alert key, whatever became of them."""
        return sum(self.outcomes.values())

    def late_share(self) -> float:
        """Share of the key-events that came after their window had closed (and were not counted)."""
        total = self.key_events()
        return self.outcomes.get(LATE, 0) / total if total else 0.0

    def usable(self) -> bool:
        """Whether any event was counted (not all invalid, ignored for their key type, or late)."""
        return self.outcomes.get(ACCEPTED, 0) > 0

    def ignored(self) -> int:
        return self.outcomes.get(IGNORED, 0)


GZIP_MAGIC = b"\x1f\x8b"


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object or the raw line when it is not JSON). A gzip file is read through
    (exports are often compressed), a byte-order mark is dropped, and an Elasticsearch hit
    (`{"_index", "_id", "_source": {...}}`) stands for its `_source`."""
    with path.open("rb") as raw:
        packed = raw.read(2) == GZIP_MAGIC
    opener = gzip.open if packed else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, unwrapped_hit(json.loads(line))
            except (json.JSONDecodeError, RecursionError):  # not JSON, or nested too deep to read
                yield lineno, line


def unwrapped_hit(obj: Any) -> Any:
    """An Elasticsearch hit's `_source` (its `_id` as `id` when the source has none); anything else as is."""
    if isinstance(obj, dict) and isinstance(obj.get("_source"), dict):
        source = dict(obj["_source"])
        if "id" not in source and isinstance(obj.get("_id"), str):
            source["id"] = obj["_id"]
        return source
    return obj


def is_labeled(obj: Any) -> bool:
    return isinstance(obj, dict) and "key_type" in obj and ("sentiment" in obj or "sentiment_probs" in obj)


def is_labeled_document(obj: Any) -> bool:
    """A message stored with its labels (an export of the Elasticsearch events index: `sentiment`,
    `tickers`, `topic`, `source`, no `key_type`): its labels are used, not the model's anew."""
    return (
        isinstance(obj, dict) and "key_type" not in obj and ("sentiment" in obj or "sentiment_probs" in obj)
    )


def document_events(doc: dict[str, Any], key_types: Sequence[str]) -> list[dict[str, Any]]:
    """The labeled events the pipeline wrote for a stored document: one per alert key of `key_types`
    (`alert_keys_of`, as the pipeline fans out; a value that is missing or no text gives no key)."""
    tickers = doc.get("tickers")
    keys = alert_keys_of(
        [t for t in tickers if isinstance(t, str) and t] if isinstance(tickers, list) else [],
        _text_or_none(doc.get("topic")),
        _text_or_none(doc.get("source")),
        key_types,
    )
    message_id = doc.get("id") if isinstance(doc.get("id"), str) else ""
    return [
        {**doc, "event_id": f"{message_id}|{kt}:{key}" if message_id else "", "key_type": kt, "key": key}
        for kt, key in keys
    ]


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_records(
    settings: AlertSettings, records: Iterable[tuple[int, Any]], invalid: list[tuple[int, str]]
) -> list[Replayed]:
    """The usable events of `records` (line, decoded object); the others are appended to `invalid`."""
    out: list[Replayed] = []
    for lineno, obj in records:
        if isinstance(obj, str):
            invalid.append((lineno, "invalid_json: not a JSON line"))
            continue
        if isinstance(obj, dict) and "key_type" not in obj and "sentiment" not in obj and "text" in obj:
            invalid.append((lineno, "raw: a raw message among labeled events (not labeled: replay it apart)"))
            continue
        try:
            event = parse_event(obj, settings.negative_label)
        except InvalidEvent as exc:
            invalid.append((lineno, f"{exc.code}: {exc}"))
            continue
        out.append(Replayed(lineno, event, labeled_time(obj)))
    return out


def in_replay_order(items: Sequence[Replayed], max_future_s: float) -> list[Replayed]:
    """`items` sorted by the time the live worker counts them at; stable, so ties keep the file order."""
    return sorted(items, key=lambda item: item.replay_time(max_future_s))


def transition_time(alert: Alert) -> float:
    """When the alert changed state: the end of the window that fired it, or its resolve."""
    return alert.ends_at if alert.status == "resolved" and alert.ends_at is not None else alert.window_end


def run_backtest(
    settings: AlertSettings,
    records: Iterable[tuple[int, Any]],
    *,
    route: Route = one_partition,
    sort: bool = True,
    final_flush: bool = True,
) -> BacktestResult:
    """Replay records (line, labeled-event object), sorted by time unless `sort` is False (file order, as
    they arrived), each key in the detector of its partition (`route`); close all windows at the end."""
    result = BacktestResult()
    items = parse_records(settings, records, result.invalid)
    if sort:
        items = in_replay_order(items, settings.max_future_s)
    replay(settings, items, route, result, final_flush=final_flush)
    return result


def replay(
    settings: AlertSettings,
    items: Sequence[Replayed],
    route: Route,
    result: BacktestResult,
    *,
    final_flush: bool = True,
) -> None:
    """Feed `items` in order to one detector per partition, with `labeled_at` as the wall clock; the
    transitions of all partitions are merged in time order."""
    detectors: dict[int, Detector] = {}
    last: float | None = None
    for item in items:
        partition = route(item.event.key_id)
        detector = detectors.get(partition)
        if detector is None:
            detector = detectors[partition] = Detector(settings, trace=True)
        outcome = detector.add(item.event, item.labeled_at)
        result.outcomes[outcome] += 1
        if outcome == ACCEPTED:
            counted_at = item.replay_time(settings.max_future_s)
            last = counted_at if last is None else max(last, counted_at)
        result.alerts.extend(detector.advance())
    if final_flush and last is not None:
        end = last + settings.window_s + settings.allowed_lateness_s
        for detector in detectors.values():
            result.alerts.extend(detector.advance(end))
    result.alerts.sort(key=transition_time)
    result.stats = sorted((s for d in detectors.values() for s in d.trace), key=lambda s: s.window_start)


def run_events(settings: AlertSettings, events: Sequence[LabeledEvent]) -> BacktestResult:
    """The same for already-parsed events (synthetic streams), in their order, in one detector."""
    result = BacktestResult()
    detector = Detector(settings, trace=True)
    for e in events:
        result.outcomes[detector.add(e)] += 1
        result.alerts.extend(detector.advance())
    if events:
        end = max(e.ts for e in events) + settings.window_s + settings.allowed_lateness_s
        result.alerts.extend(detector.advance(end))
    result.stats = detector.trace
    return result
