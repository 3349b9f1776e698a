"""A key type dropped from `alerts.keys` between restarts: its restored firing alerts are retired at once,
saying why, and its keys are forgotten; the other key types are untouched."""

from __future__ import annotations

import json

from alerts.config import AlertSettings
from alerts.detector import IGNORED, Detector
from alerts.events import LabeledEvent
from alerts.model import Alert

W = 60


def cfg(keys: list[str]) -> AlertSettings:
    return AlertSettings(window_s=W, allowed_lateness_s=0, warmup_windows=8, min_count=30, keys=keys)


def window(w: int, key_type: str, key: str, negatives: int, n: int = 50) -> list[LabeledEvent]:
    """`n` events of one key in window `w`, the first `negatives` negative."""
    return [
        LabeledEvent(
            f"{key_type}:{key}:{w}:{i}",
            key_type,
            key,
            w * W + 1 + i * 0.5,
            i < negatives,
            float(i < negatives),
        )
        for i in range(n)
    ]


def run(d: Detector, windows: range, plan: dict[tuple[str, str], int]) -> list[Alert]:
    out: list[Alert] = []
    for w in windows:
        for (key_type, key), negatives in plan.items():
            d.add_many(window(w, key_type, key, negatives))
        out += d.advance(w * W + W)
    return out


def test_alerts_of_a_key_type_no_longer_watched_are_retired_at_once_and_forgotten() -> None:
    d = Detector(cfg(["ticker", "topic"]))
    quiet = {("ticker", "ACME"): 5, ("topic", "Earnings"): 5, ("topic", "Macro"): 5}
    spike = {("ticker", "ACME"): 30, ("topic", "Earnings"): 30, ("topic", "Macro"): 5}
    fired = run(d, range(20), quiet) + run(d, range(20, 22), spike)
    assert sorted((a.key_type, a.key) for a in fired if a.status == "firing") == [
        ("ticker", "ACME"),
        ("topic", "Earnings"),
    ]
    topic_alert = next(a for a in d.firing() if a.key_type == "topic")
    d.add_many(window(22, "ticker", "ACME", 30) + window(22, "topic", "Macro", 5))  # an open window
    snap = json.loads(json.dumps(d.snapshot()))

    restarted = Detector(cfg(["topic"]))
    assert restarted.restore(snap) == []
    assert [(a.key_type, a.key) for a in restarted.firing()] == [("topic", "Earnings")]  # not re-sent
    (retired,) = restarted.advance()  # at once, before any window closes
    assert (retired.status, retired.key_type, retired.key) == ("resolved", "ticker", "ACME")
    assert retired.summary.endswith("(resolved: key type ticker is no longer watched)")
    assert retired.ends_at is not None and retired.ends_at >= retired.window_end
    assert restarted.firing() == [topic_alert]  # the topic alerts are untouched
    topics = {k: v for k, v in snap["keys"].items() if k.startswith("topic:")}
    assert {k: v.to_dict() for k, v in restarted.keys.items()} == topics
    assert [list(accs) for accs in restarted.open.values()] == [["topic:Macro"]]

    # the spike goes on: the ticker's events are ignored, nothing more about it, the topic still fires
    assert restarted.add(window(22, "ticker", "ACME", 30)[0]) == IGNORED
    later = run(restarted, range(22, 26), spike)
    assert [a for a in later if a.key_type == "ticker"] == []
    assert [a.alert_id for a in restarted.firing()] == [topic_alert.alert_id]
    again = restarted.snapshot()
    assert not any(k.startswith("ticker:") for k in again["keys"])
    assert not any(k.startswith("ticker:") for accs in again["open"].values() for k in accs)
    assert Detector(cfg(["topic"])).restore(again) == []
