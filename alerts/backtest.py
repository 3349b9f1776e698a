"""Replay a file of labeled events through the detector: which alerts would have fired, and the per-key
series (share vs baseline, volume) an analyst needs to tune thresholds before going live."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.config import AlertSettings
from alerts.detector import ACCEPTED, Detector, WindowStat
from alerts.events import InvalidEvent, LabeledEvent, parse_event
from alerts.model import Alert


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


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object or the raw line when it is not JSON)."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # not JSON, or nested too deep to read
                yield lineno, line


def is_labeled(obj: Any) -> bool:
    return isinstance(obj, dict) and "key_type" in obj and ("sentiment" in obj or "sentiment_probs" in obj)


def run_backtest(
    settings: AlertSettings, records: Iterable[tuple[int, Any]], *, final_flush: bool = True
) -> BacktestResult:
    """Feed records (line, labeled-event object) in file order; close all windows at the end."""
    result = BacktestResult()
    detector = Detector(settings, trace=True)
    last_ts: float | None = None
    for lineno, obj in records:
        if isinstance(obj, str):
            result.invalid.append((lineno, "invalid_json: not a JSON line"))
            continue
        try:
            event = parse_event(obj, settings.negative_label)
        except InvalidEvent as exc:
            result.invalid.append((lineno, f"{exc.code}: {exc}"))
            continue
        outcome = detector.add(event)
        result.outcomes[outcome] += 1
        if outcome == ACCEPTED:
            last_ts = event.ts if last_ts is None else max(last_ts, event.ts)
        result.alerts.extend(detector.advance())
    if final_flush and last_ts is not None:
        result.alerts.extend(detector.advance(last_ts + settings.window_s + settings.allowed_lateness_s))
    result.stats = detector.trace
    return result


def run_events(settings: AlertSettings, events: Sequence[LabeledEvent]) -> BacktestResult:
    """The same for already-parsed events (synthetic streams)."""
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
