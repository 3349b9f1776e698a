"""Replay a file of labeled events through the detector: which alerts would have fired, and the per-key
series (share vs baseline, volume) an analyst needs to tune thresholds before going live.

The replay mirrors the live worker: one detector per partition of the labeled topic (a key's windows close
with its partition's event time, and only the keys of one partition are corrected for multiple testing
together), and an event dated more than `max_future_s` ahead of when it was labeled is counted at that time,
as the worker clamps it to its wall clock. Exports are rarely in the order the worker got the events (newest
first, one partition after another), and the detector drops what comes after its window closed, so by
default the events are replayed sorted by when they arrived: `labeled_at`, which the pipeline writes into
every labeled event (a slow source's events are then late, as live), else their own time. A time far
beyond the bulk of the file (`Horizon`: a bad date) is skipped, as the pipeline would dead-letter it.

Exports run to millions of lines, so the file is read as a stream, never held whole: a first pass tells
its kind (`file_kind`: it stops at the first labeled event), a second one reads the events, and only the
sort holds them all, each packed into one bytes object (`Replayed.pack`: under half the objects' memory)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import struct
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.config import AlertSettings
from alerts.detector import ACCEPTED, IGNORED, LATE, Detector, WindowStat
from alerts.events import InvalidEvent, LabeledEvent, alert_keys_of, checked_time, labeled_time, parse_event
from alerts.model import Alert, rfc3339

DEFAULT_PARTITIONS = 6
"""Partitions of the labeled topic as deployed (`finsent.labeled` in deploy/k8s/kafka-topics.yaml)."""
LATE_WARN_SHARE = 0.02
"""Above this share of late key-events the replay is not what the live worker would have seen: say so."""
FAR_FUTURE_S = 86_400.0
"""The least a far-future time lies beyond the bulk of the file (`Horizon`); the pipeline dead-letters a
`published_at` more than this ahead of its clock (`DecodeLimits.max_ahead_s` in finsent.runner)."""
BODY_QUANTILE = 0.99
"""The share of the file's events (by arrival) that is its bulk: the rest may be bad dates."""

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

    @property
    def arrival(self) -> float:
        """When the live worker got the event, the order of the replay: when it was labeled, or without
        `labeled_at` its own time (as if labeled at once: it is late only if the file says so)."""
        return self.event.ts if self.labeled_at is None else self.labeled_at

    def order(self) -> tuple[float, float]:
        """What the replay sorts by: `arrival`, then the event's time, as a labeler batch (one
        `labeled_at`) is mostly in publication order whichever way the export lists it."""
        return self.arrival, self.event.ts

    def replay_time(self, max_future_s: float) -> float:
        """The time the live worker counts the event at: its own, or `labeled_at` when it is dated further
        ahead of that than `max_future_s` (`Detector.add` clamps it to the wall clock the same way)."""
        ts, now = self.event.ts, self.labeled_at
        return now if now is not None and ts > now + max_future_s else ts

    def pack(self, seq: int) -> bytes:
        """The item as one bytes object that sorts (as bytes) by `order()`, then by `seq` (its place in
        the file: ties keep the file order), and that `unpack` turns back into an equal item: every field
        of the event is kept. In memory about 120 bytes more than its strings' UTF-8 (some 350 bytes for an
        event of a 120-character text), where the objects take about 800."""
        if _NOT_PACKED:
            raise TypeError(f"LabeledEvent fields {', '.join(_NOT_PACKED)} cannot be packed")
        e = self.event
        strings = [getattr(e, name) for name in _STRINGS]
        fields = _FIELDS.pack(
            *[getattr(e, name) for name in _NUMBERS],
            0.0 if self.labeled_at is None else self.labeled_at,
            self.labeled_at is not None,
            self.lineno,
            *map(len, strings),
        )
        order = _ORDER.pack(*map(_sortable, self.order()), seq)
        return order + fields + "".join(strings).encode("utf-8", "surrogatepass")

    @staticmethod
    def unpack(packed: bytes) -> Replayed:
        """The item `pack` made `packed` of."""
        values = _FIELDS.unpack_from(packed, _ORDER.size)
        n = len(_NUMBERS)
        labeled_at, has_labeled_at, lineno = values[n : n + 3]
        joined = packed[_ORDER.size + _FIELDS.size :].decode("utf-8", "surrogatepass")
        parts = list(values[:n])
        at = 0
        for size in values[n + 3 :]:  # in characters
            parts.append(joined[at : at + size])
            at += size
        event = LabeledEvent(*[parts[i] for i in _ARGS])
        return Replayed(lineno, event, labeled_at if has_labeled_at else None)


def _event_fields() -> tuple[tuple[str, ...], tuple[str, ...], str, tuple[int, ...], tuple[str, ...]]:
    """LabeledEvent's fields: those packed as numbers (floats, then booleans), those packed as strings,
    the struct format of the numbers, where each argument of LabeledEvent is among the numbers and then
    the strings, and the fields of any other type, which `pack` cannot keep (then `in_replay_order`
    sorts the objects themselves: more memory, nothing lost)."""
    by_type: dict[str, list[str]] = {"float": [], "bool": [], "str": []}
    names = [f.name for f in dataclasses.fields(LabeledEvent)]
    other: list[str] = []
    for f in dataclasses.fields(LabeledEvent):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        by_type.get(kind, other).append(f.name)
    numbers = (*by_type["float"], *by_type["bool"])
    packed = (*numbers, *by_type["str"])
    number_format = f"{len(by_type['float'])}d{len(by_type['bool'])}?"
    args = tuple(packed.index(name) for name in names if name in packed)
    return numbers, tuple(by_type["str"]), number_format, args, tuple(other)


_NUMBERS, _STRINGS, _NUMBER_FORMAT, _ARGS, _NOT_PACKED = _event_fields()
# arrival and event time (`_sortable`) and place in the file, big-endian: bytes compare as these numbers do
_ORDER = struct.Struct(">QQQ")
# the event's numbers, labeled_at, whether there is one, the line, and the lengths in characters of its
# strings, whose UTF-8 follows, in the order of _STRINGS
_FIELDS = struct.Struct(f"<{_NUMBER_FORMAT}d?q{len(_STRINGS)}I")
_SIGN = 1 << 63


def _sortable(t: float) -> int:
    """A 64-bit number that orders as `t` does (IEEE 754 bits, negative numbers' flipped); -0.0 is 0.0."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", t + 0.0))
    return int(bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits & _SIGN else bits | _SIGN)


def _unsortable(n: int) -> float:
    """The time `_sortable` made `n` of."""
    bits = n ^ _SIGN if n & _SIGN else n ^ 0xFFFF_FFFF_FFFF_FFFF
    (t,) = struct.unpack(">d", struct.pack(">Q", bits))
    return float(t)


def _packed_arrival(packed: bytes) -> float:
    return _unsortable(_ORDER.unpack_from(packed)[0])


@dataclass
class BacktestResult:
    alerts: list[Alert] = field(default_factory=list)
    stats: list[WindowStat] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    invalid: list[tuple[int, str]] = field(default_factory=list)
    with_labeled_at: int = 0
    """Key-events given to the detectors that carried `labeled_at` (replayed in its order)."""
    late_keys: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    """Key id -> (its late key-events, the most any was labeled after its own time; None: no labeled_at)."""

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

    def note_late(self, item: Replayed) -> None:
        count, lag = self.late_keys.get(item.event.key_id, (0, None))
        if item.labeled_at is not None:
            lag = max(item.labeled_at - item.event.ts, -math.inf if lag is None else lag)
        self.late_keys[item.event.key_id] = (count + 1, lag)

    def most_late(self) -> tuple[str, int, float | None] | None:
        """The key with the most late key-events (the first of them in the replay on a tie): its id,
        their count, and the most one was labeled after its own time (None: none had labeled_at)."""
        if not self.late_keys:
            return None
        key_id = max(self.late_keys, key=lambda k: self.late_keys[k][0])
        return key_id, *self.late_keys[key_id]


GZIP_MAGIC = b"\x1f\x8b"


class UnreadableFile(OSError):
    """The file cannot be read through: an I/O error, or a gzip file cut short or corrupt (which gzip
    raises as EOFError or zlib.error)."""


class JsonlFile:
    """The non-blank lines of a JSONL file, (line number, line), read anew at each iteration, so that the
    file can be read twice (its kind, then its events) without being held. A gzip file is read through
    (exports are often compressed) and a byte-order mark is dropped. `lines`: how many non-blank lines the
    latest iteration read. A read error raises UnreadableFile, whenever in the file it comes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0

    def __iter__(self) -> Iterator[tuple[int, str]]:
        self.lines = 0
        try:
            with self.path.open("rb") as raw:
                packed = raw.read(2) == GZIP_MAGIC
            opener = gzip.open if packed else open
            with opener(self.path, "rt", encoding="utf-8-sig", errors="replace") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if line.strip():
                        self.lines += 1
                        yield lineno, line
        except (OSError, EOFError, zlib.error) as exc:
            raise UnreadableFile(str(exc)) from exc


def decode_line(line: str) -> Any:
    """The line's JSON (an Elasticsearch hit, `{"_index", "_id", "_source": {...}}`, as its `_source`), or
    the line itself when it is not JSON or nested too deep to read."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return line
    return unwrapped_hit(obj)


def decoded(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, Any]]:
    """(line number, `decode_line`) of each line, one at a time."""
    for lineno, line in lines:
        yield lineno, decode_line(line)


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object or the raw line when it is not JSON) of a JSONL file, streamed."""
    return decoded(JsonlFile(path))


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


def documents_as_events(
    records: Iterable[tuple[int, Any]], key_types: Sequence[str]
) -> Iterator[tuple[int, Any]]:
    """Each stored labeled document of `records` as its labeled events (`document_events`), on its line;
    the other records as they are."""
    for lineno, obj in records:
        if is_labeled_document(obj):
            for event in document_events(obj, key_types):
                yield lineno, event
        else:
            yield lineno, obj


LABELED = "labeled"  # labeled events: replayed as they are
DOCUMENTS = "documents"  # stored labeled documents (an export of the events index): their labels are used
RAW = "raw"  # raw messages: labeled by the model


@dataclass(frozen=True, slots=True)
class FileKind:
    kind: str
    """LABELED when any line is a labeled event, else DOCUMENTS when any is a labeled document, else RAW."""
    counted: int = 0
    """The lines `file_kind`'s `count` said yes to: of those before the first labeled event or document,
    so of the whole file when the kind is RAW."""


def file_kind(lines: Iterable[tuple[int, str]], count: Callable[[int, Any], bool] | None = None) -> FileKind:
    """What the lines hold, read through once without keeping them; it stops at the first labeled event.
    `count(line number, decoded object)` is asked of each line before the first labeled event or
    document, so that the raw messages of a file of them are counted in the same pass. No line at all is
    LABELED: there is nothing to label."""
    documents = seen = False
    counted = 0
    for lineno, line in lines:
        seen = True
        # no backslash (no escapes: its keys are spelt as they read) and no "key_type": no labeled event
        plain = "\\" not in line and "key_type" not in line
        if plain and (documents or (count is None and "sentiment" not in line)):
            continue  # nor anything else to learn from it: not decoded
        obj = decode_line(line)
        if is_labeled(obj):
            return FileKind(LABELED, counted)
        if is_labeled_document(obj):
            documents = True
        elif not documents and count is not None and count(lineno, obj):
            counted += 1
    if not seen:
        return FileKind(LABELED)
    return FileKind(DOCUMENTS if documents else RAW, counted)


def parse_records(
    settings: AlertSettings, records: Iterable[tuple[int, Any]], invalid: list[tuple[int, str]]
) -> Iterator[Replayed]:
    """The usable events of `records` (line, decoded object), one at a time as `records` yields them;
    the others are appended to `invalid`."""
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
        yield Replayed(lineno, event, labeled_time(obj))


@dataclass(frozen=True, slots=True)
class Horizon:
    """The end of the bulk of a file and how far beyond it a time is taken for a bad date (a typo's year,
    a clock off by decades): `BODY_QUANTILE` of the events arrived by `body_end`, and a time later than
    `at` lies beyond it by more than FAR_FUTURE_S and more than the bulk spans (a file of months after a
    pause of a few days is no outlier). Left in, one such event would move event time to its date: every
    window, the last firing alert's too, would close at once."""

    body_start: float
    body_end: float

    @property
    def at(self) -> float:
        return self.body_end + max(FAR_FUTURE_S, self.body_end - self.body_start)

    @staticmethod
    def of(count: int, arrival: Callable[[int], float]) -> Horizon | None:
        """The horizon of `count` arrivals, `arrival(i)` the i-th earliest; None when there are none."""
        if not count:
            return None
        last = count - 1
        return Horizon(arrival(int((1 - BODY_QUANTILE) * last)), arrival(int(BODY_QUANTILE * last)))

    def why(self, item: Replayed) -> str:
        return (
            f"far_future: dated {rfc3339(item.event.ts)}, well after the bulk of the file "
            f"({BODY_QUANTILE:.0%} of its events by {rfc3339(self.body_end)}): a bad date, which the "
            "pipeline dead-letters (over a day ahead of its clock); left in, it would close every window"
        )


def in_replay_order(
    items: Iterable[Replayed],
    max_future_s: float,
    far_future: list[tuple[int, str]] | None = None,
) -> Iterator[Replayed]:
    """`items` sorted by `Replayed.order` (`labeled_at`, as the live worker got them, else the event's
    time; then the event's time); stable, so ties keep the file order.
    All are held for the sort, each packed into bytes (`Replayed.pack`), and let go as they are given
    out. With `far_future`, an item the worker would count at a time beyond the file's `Horizon` is left
    out and its line appended there (once per line) with the reason."""
    if _NOT_PACKED:  # an event field of a type `pack` does not know: sorted as objects
        ordered = sorted(items, key=Replayed.order)
        horizon = Horizon.of(len(ordered), lambda i: ordered[i].arrival)
        given: Iterator[Replayed] = iter(ordered)
    else:
        packed = [item.pack(seq) for seq, item in enumerate(items)]
        packed.sort(reverse=True)  # no ties: each has its own `seq`
        horizon = Horizon.of(len(packed), lambda i: _packed_arrival(packed[len(packed) - 1 - i]))
        given = _unpacked(packed)
    skipped_lines: set[int] = set()
    for item in given:
        if far_future is not None and horizon is not None and item.replay_time(max_future_s) > horizon.at:
            if item.lineno not in skipped_lines:
                skipped_lines.add(item.lineno)
                far_future.append((item.lineno, horizon.why(item)))
            continue
        yield item


def _unpacked(packed: list[bytes]) -> Iterator[Replayed]:
    """The items of `packed` (sorted descending), ascending, each let go as it is given out."""
    while packed:
        yield Replayed.unpack(packed.pop())


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
    trace: bool = True,
) -> BacktestResult:
    """Replay records (line, labeled-event object) sorted by arrival (`in_replay_order`: `labeled_at`, else
    the event's time; bad dates far beyond the bulk of the file skipped as invalid lines), or unless
    `sort` is False in file order, each key in the detector of its partition (`route`); close all windows
    at the end. `records` is read once, as it goes: only the sort holds the events (packed), and in file
    order nothing is held (nor is anything skipped as far_future: the bulk of the file is not known
    before it is replayed). Without `trace`, `stats` (the per-key series, for charts) stays empty."""
    result = BacktestResult()
    items = parse_records(settings, records, result.invalid)
    if sort:
        items = in_replay_order(items, settings.max_future_s, far_future=result.invalid)
    replay(settings, items, route, result, final_flush=final_flush, trace=trace)
    return result


def replay(
    settings: AlertSettings,
    items: Iterable[Replayed],
    route: Route,
    result: BacktestResult,
    *,
    final_flush: bool = True,
    trace: bool = True,
) -> None:
    """Feed `items` in order to one detector per partition, with `labeled_at` as the wall clock; the
    transitions of all partitions are merged in time order."""
    detectors: dict[int, Detector] = {}
    last: float | None = None
    for item in items:
        partition = route(item.event.key_id)
        detector = detectors.get(partition)
        if detector is None:
            detector = detectors[partition] = Detector(settings, trace=trace)
        outcome = detector.add(item.event, item.labeled_at)
        result.outcomes[outcome] += 1
        if item.labeled_at is not None:
            result.with_labeled_at += 1
        if outcome == LATE:
            result.note_late(item)
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


def run_events(
    settings: AlertSettings, events: Sequence[LabeledEvent], *, sort: bool = True
) -> BacktestResult:
    """The same for events made in Python (synthetic streams, a DataFrame's rows), in one detector: sorted
    by time unless `sort` is False (then in their order, and what comes after its window closed is late,
    as live). Each `ts` must be epoch seconds: ValueError names the first that is not (milliseconds read
    as seconds land past year 9999), instead of a replay in which every event is late."""
    for i, e in enumerate(events):
        try:
            checked_time(e.ts)
        except ValueError as exc:
            raise ValueError(f"events[{i}].ts: {exc} (epoch seconds expected, not milliseconds)") from None
    if sort:
        events = sorted(events, key=lambda e: e.ts)  # stable: ties keep their order
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
