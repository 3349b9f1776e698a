"""Seeded synthetic labeled streams, for tests and for trying settings without data.

A stream is a list of per-window plans (key -> (messages, negative share)); events get event times spread
uniformly inside their window, so lateness and ordering behave as in a live stream."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from alerts.events import LabeledEvent

Plan = Mapping[str, tuple[int, float]]


def make_events(
    plans: Sequence[Plan],
    *,
    window_s: int = 60,
    start: float = 1_700_000_000.0,
    seed: int = 0,
    shuffle_within_window: bool = True,
) -> list[LabeledEvent]:
    """Events for consecutive windows; `plans[i][key_id] = (count, p_negative)`, key_id `type:value`."""
    rng = random.Random(seed)
    base = int(start // window_s) * window_s
    out: list[LabeledEvent] = []
    serial = 0
    for w, plan in enumerate(plans):
        w0 = base + w * window_s
        batch: list[LabeledEvent] = []
        for key_id, (count, p_neg) in plan.items():
            key_type, _, key = key_id.partition(":")
            for _ in range(count):
                serial += 1
                negative = rng.random() < p_neg
                prob = rng.uniform(0.55, 0.99) if negative else rng.uniform(0.0, 0.45)
                batch.append(
                    LabeledEvent(
                        event_id=f"m{serial}|{key_id}",
                        key_type=key_type,
                        key=key,
                        ts=w0 + rng.uniform(0, window_s - 1e-3),
                        negative=negative,
                        negative_prob=prob,
                        text=f"message {serial} about {key}",
                        url=f"https://example.com/{serial}",
                        message_id=f"m{serial}",
                    )
                )
        if shuffle_within_window:
            rng.shuffle(batch)
        else:
            batch.sort(key=lambda e: e.ts)
        out.extend(batch)
    return out
