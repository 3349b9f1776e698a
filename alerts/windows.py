"""Tumbling event-time windows: alignment and the per-(window, key) accumulator.

The accumulator also holds the event ids seen in its window, so a replayed event is counted once; the ids
leave memory when the window closes (a replay after that is late anyway)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from alerts.events import LabeledEvent


def window_start(ts: float, size: int) -> int:
    """Start (epoch seconds) of the tumbling window of `size` seconds holding `ts`."""
    return math.floor(ts / size) * size


@dataclass
class WindowAccumulator:
    """Counts of one key in one window, plus its most negative examples."""

    n: int = 0
    neg: int = 0
    neg_w: float = 0.0
    ids: set[str] = field(default_factory=set)
    examples: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, event: LabeledEvent, max_examples: int) -> bool:
        """Count the event once; False when its id was already counted."""
        if event.event_id in self.ids:
            return False
        self.ids.add(event.event_id)
        self.n += 1
        self.neg += 1 if event.negative else 0
        self.neg_w += event.negative_prob
        if max_examples and event.text and (event.negative or event.negative_prob >= 0.5):
            self.examples.append((event.negative_prob, event.text, event.url))
            self.examples.sort(key=lambda e: -e[0])
            del self.examples[max_examples:]
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "neg": self.neg,
            "neg_w": self.neg_w,
            "ids": sorted(self.ids),
            "examples": [list(e) for e in self.examples],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowAccumulator:
        return cls(
            n=int(data["n"]),
            neg=int(data["neg"]),
            neg_w=float(data["neg_w"]),
            ids=set(data.get("ids") or ()),
            examples=[(float(p), str(t), str(u)) for p, t, u in data.get("examples") or ()],
        )
