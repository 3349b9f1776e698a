"""Seeded synthetic labeled streams, for tests and for trying settings without data.

A stream is a list of per-window plans (key -> (messages, negative share)); events get event times spread
uniformly inside their window, so lateness and ordering behave as in a live stream."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from alerts.config import AlertSettings
from alerts.detector import Detector
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


def spike_caught(
    settings: AlertSettings,
    baseline: float,
    seed: int,
    *,
    history: int = 20,
    messages: int = 50,
    lift: float = 0.20,
    spike_windows: int = 2,
) -> bool:
    """One run of the detection-power property: `history` normal windows of one key, then a spike of
    `lift` (share points) for `spike_windows` windows. True when the key fires by the end of the spike."""
    w = settings.window_s
    normal = {"ticker:A": (messages, baseline)}
    spike = {"ticker:A": (messages, min(1.0, baseline + lift))}
    events = make_events([normal] * history + [spike] * spike_windows, seed=seed, window_s=w)
    detector = Detector(settings)
    fired = False
    for e in events:
        detector.add(e)
        fired = fired or any(a.status == "firing" for a in detector.advance())
    spike_end = int(events[0].ts // w) * w + (history + spike_windows) * w
    last = detector.advance(spike_end + settings.allowed_lateness_s)  # closes exactly the spike windows
    return fired or any(a.status == "firing" for a in last)


def null_alerts(
    settings: AlertSettings, baselines: Sequence[float], windows: int, *, messages: int = 50, seed: int = 0
) -> dict[float, int]:
    """Firing alerts on a null stream (shares never change): one key per baseline, all in one detector
    (one partition), `windows` windows each. Returns alerts per baseline."""
    plan = {f"ticker:K{i}": (messages, b) for i, b in enumerate(baselines)}
    detector = Detector(settings)
    fired: dict[float, int] = dict.fromkeys(baselines, 0)
    chunk = 50  # generate in chunks: bounded memory
    for part in range(0, windows, chunk):
        n = min(chunk, windows - part)
        events = make_events(
            [plan] * n,
            seed=seed * 1_000_003 + part,
            window_s=settings.window_s,
            start=1_700_000_000.0 + part * settings.window_s,
        )
        for e in events:
            detector.add(e)
            for a in detector.advance():
                if a.opens_episode:
                    fired[baselines[int(a.key[1:])]] += 1
    end = 1_700_000_000.0 + (windows + 1) * settings.window_s + settings.allowed_lateness_s
    for a in detector.advance(end):
        if a.opens_episode:
            fired[baselines[int(a.key[1:])]] += 1
    return fired
