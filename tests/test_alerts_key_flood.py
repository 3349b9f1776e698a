"""Posts full of made-up cashtags: an open window's keys, their example texts and the eviction pass.

Keys with events in an open window are never evicted, so before the new-key cap one 15-minute window of
such posts put ~144,000 keys and their ~1 KB example texts in one partition's state record: over the state
topic's 16 MiB, every save failed and the worker restarted for ever."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from alerts.config import AlertSettings
from alerts.detector import ACCEPTED, KEY_CAP, Detector
from alerts.events import LabeledEvent
from alerts.model import Alert
from alerts.state_codec import encode_state
from alerts.synthetic import make_events
from finsent.alert_metrics import AlertMetrics

W = 60
START = 1_700_000_040.0


def settings(**changes: Any) -> AlertSettings:
    base: dict[str, Any] = {"window_s": W, "allowed_lateness_s": 0, "max_keys": 100, "volume_rule": False}
    return AlertSettings(**{**base, **changes})


def established(s: AlertSettings, windows: int = 30) -> tuple[Detector, float]:
    """A detector knowing ticker A (`windows` normal windows at 10 % negative); returns it and the start
    of the next window."""
    detector = Detector(s)
    for event in make_events([{"ticker:A": (60, 0.1)}] * windows, window_s=W, start=START, seed=1):
        detector.add(event)
    t = START + windows * W
    detector.advance(t)
    return detector, t


def bogus(tag: str, ts: float, text: str = "Fraud probe, shares crash") -> LabeledEvent:
    """One negative post's event for a made-up cashtag."""
    return LabeledEvent(
        f"{tag}|ticker:{tag}", "ticker", tag, ts, True, 0.97, text, f"https://x.example/{tag}"
    )


def spike(key: str, ts: float, n: int = 60, negatives: int = 45) -> list[LabeledEvent]:
    return [
        LabeledEvent(
            f"s{key}{j}|ticker:{key}",
            "ticker",
            key,
            ts + j * 0.1,
            j < negatives,
            0.9 if j < negatives else 0.1,
            f"{key} crashes ({j})",
            f"https://x.example/{key}/{j}",
        )
        for j in range(n)
    ]


def open_keys(detector: Detector) -> int:
    return sum(len(accs) for accs in detector.open.values())


def test_a_flood_of_new_keys_stops_at_the_cap_while_known_keys_and_keys_in_the_window_count() -> None:
    detector, t = established(settings())
    outcomes = [detector.add(bogus(f"X{i}", t + 1 + i * 0.01)) for i in range(300)]
    assert outcomes.count(ACCEPTED) == 100 and outcomes.count(KEY_CAP) == 200
    assert detector.new_key_cap() == 100  # max(max_keys / 10, 100, room left under max_keys)
    assert outcomes[:100] == [ACCEPTED] * 100  # first come, first counted
    # a known key, and a new key already in the window, still count during the flood
    assert [detector.add(e) for e in spike("A", t + 10, n=5)] == [ACCEPTED] * 5
    again = [
        LabeledEvent(f"again{i}|ticker:X{i}", "ticker", f"X{i}", t + 20, True, 0.9, "", "") for i in range(10)
    ]
    assert [detector.add(e) for e in again] == [ACCEPTED] * 10
    assert detector.add(bogus("Y", t + 30)) == KEY_CAP
    assert detector.watermark == t + 30  # a refused event still moves event time on
    assert open_keys(detector) == 101
    assert detector.open[int(t)]["ticker:X0"].n == 2


def test_a_fresh_detector_takes_a_whole_stream_of_new_keys_up_to_max_keys() -> None:
    """The room left under max_keys is the cap while it is larger: a first start (or a replay from the
    earliest offset) must not need several windows to count a real stream's keys."""
    detector = Detector(settings(max_keys=1_000))
    outcomes = [detector.add(bogus(f"K{i}", START + 1)) for i in range(1_050)]
    assert outcomes.count(ACCEPTED) == 1_000 and outcomes.count(KEY_CAP) == 50
    detector.advance(START + W + 1)
    assert len(detector.keys) == 1_000 and detector.new_key_cap() == 100


def test_a_spike_on_a_known_ticker_during_a_flood_fires_with_its_examples() -> None:
    detector, t = established(settings())
    for i in range(500):  # the flood comes first: the window's new-key cap is reached before A's spike
        detector.add(bogus(f"X{i}", t + 1))
    for event in spike("A", t + 2):
        assert detector.add(event) == ACCEPTED
    out = detector.advance(t + W)
    fired = [a for a in out if a.key == "A" and a.status == "firing"]
    assert len(fired) == 1
    assert fired[0].examples and all("A crashes" in e.text for e in fired[0].examples)
    assert [a.key for a in out] == ["A"]  # the flood's keys are in warm-up: never alerted


def test_examples_are_kept_only_for_keys_that_may_alert_at_the_window_close() -> None:
    """`_close` tests a key once its windows_seen, before the window counts, reaches warmup_windows: the
    window that completes warm-up cannot alert, the next one can."""
    s = settings(warmup_windows=3)
    detector = Detector(s)
    texts = [f"B falls {i}" for i in range(3)]
    for w in range(4):
        for i, text in enumerate(texts):
            detector.add(
                LabeledEvent(f"b{w}.{i}|ticker:B", "ticker", "B", START + w * W + i, True, 0.9, text)
            )
        detector.add(bogus(f"X{w}", START + w * W + 5))
        acc = detector.open[int(START // W * W) + w * W]["ticker:B"]
        assert acc.n == 3
        assert len(acc.examples) == (3 if w == 3 else 0), w  # windows_seen 0, 1, 2 (completes), 3
        assert detector.open[int(START // W * W) + w * W][f"ticker:X{w}"].examples == []
        detector.advance(START + (w + 1) * W)
    assert detector.keys["ticker:B"].windows_seen == 4


def test_an_earlier_window_still_open_counts_towards_warm_up() -> None:
    """Its close may complete warm-up before this window closes: the examples are kept (an alert never
    lacks them); in that earlier window itself they are not."""
    s = settings(warmup_windows=3, allowed_lateness_s=30)
    detector = Detector(s)
    base = int(START // W * W)
    for w in range(2):
        detector.add(LabeledEvent(f"b{w}|ticker:B", "ticker", "B", base + w * W + 1, False, 0.1))
    detector.advance(base + 2 * W + 30)
    assert detector.keys["ticker:B"].windows_seen == 2 and detector.next_start == base + 2 * W
    later = LabeledEvent("b3|ticker:B", "ticker", "B", base + 3 * W + 5, True, 0.9, "late one", "")
    earlier = LabeledEvent("b2|ticker:B", "ticker", "B", base + 2 * W + 50, True, 0.9, "earlier one", "")
    assert detector.add(later) == ACCEPTED and detector.add(earlier) == ACCEPTED
    assert detector.open[base + 3 * W]["ticker:B"].examples != []
    assert detector.open[base + 2 * W]["ticker:B"].examples == []


def test_the_eviction_pass_runs_only_after_a_window_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """It sorts all keys: at 55,000 keys it cost 44 ms on each of the worker's two advance() per step."""
    calls: list[int] = []
    original = Detector._evict_over_cap

    def counted(self: Detector) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(Detector, "_evict_over_cap", counted)
    detector, t = established(settings())
    calls.clear()
    for i in range(5):
        detector.add(bogus(f"X{i}", t + 1 + i))
        detector.advance()
        detector.advance(t + 10 + i)
    assert calls == []
    detector.advance(t + W)  # closes one window
    assert len(calls) == 1
    detector.advance()
    detector.advance(t + W + 30)
    assert len(calls) == 1
    detector.advance(t + 5 * W)  # an empty run of windows closes too
    assert len(calls) == 2
    restored = Detector(settings())
    restored.restore(detector.snapshot())
    restored.advance()
    restored.advance()
    assert len(calls) == 3  # once after a restore: the state may have been saved with a higher max_keys


def test_a_restore_keeps_the_window_new_key_count() -> None:
    """A restart in the middle of a flood must not open the window to another cap of new keys."""
    detector, t = established(settings())
    for i in range(150):
        detector.add(bogus(f"X{i}", t + 1))
    restored = Detector(settings())
    restored.restore(json.loads(json.dumps(detector.snapshot())))
    assert restored.add(bogus("Y", t + 2)) == KEY_CAP
    assert restored.add(LabeledEvent("a|ticker:A", "ticker", "A", t + 2, False, 0.1)) == ACCEPTED
    assert restored.add(LabeledEvent("x|ticker:X3", "ticker", "X3", t + 2, False, 0.1)) == ACCEPTED


def test_the_reviewers_flood_keeps_the_state_small() -> None:
    """The reviewer's flood scaled down (max_keys 100 instead of 50,000): negative posts of 50 made-up
    cashtags each (9 in this partition), ~1 KB of text, 2,000 messages in one 15-minute window, then three
    more such windows. The state stays within the cap's keys, without example texts."""
    s = AlertSettings(window_s=900, max_keys=100)
    detector = Detector(s)
    t0 = 1_800_000_000 - 1_800_000_000 % 900
    rnd = random.Random(7)
    empty = len(encode_state(detector.snapshot()))
    for w in range(4):
        base = t0 + w * 900
        for m in range(2_000):
            text = "Fraud probe, shares crash: " + base64.b64encode(rnd.randbytes(728)).decode()
            for j in range(9):
                detector.add(bogus(f"X{w}_{m}Q{j}", base + m % 900, text), now=base + 899)
        if w == 0:
            # bound: every kept accumulator's JSON uncompressed, with its key id (no example text)
            entry = max(
                len(json.dumps({key_id: acc.to_dict()}))
                for accs in detector.open.values()
                for key_id, acc in accs.items()
            )
            bound = empty + 100 * entry
            assert entry < 200
            assert len(encode_state(detector.snapshot())) < bound
        assert open_keys(detector) == detector.new_key_cap() == 100
        detector.advance(base + 900 + 300)
        assert len(detector.keys) <= s.max_keys
    size = len(encode_state(detector.snapshot()))
    assert size < empty + 100 * 1_000  # kept keys at ~1 KB of state each at most (closed: no hashes)


def test_the_key_cap_reason_is_exported_from_the_start() -> None:
    registry = CollectorRegistry()
    AlertMetrics(registry)
    value = registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": KEY_CAP})
    assert value == 0.0


def test_known_keys_never_get_key_cap() -> None:
    """Even past the cap of new keys, an established ticker's every event counts."""
    detector, t = established(settings())
    for i in range(200):
        detector.add(bogus(f"X{i}", t + 1))
    alerts: list[Alert] = []
    for w in range(3):
        for i in range(200):
            detector.add(bogus(f"Z{w}_{i}", t + w * W + 2))
        events = make_events([{"ticker:A": (60, 0.1)}], window_s=W, start=t + w * W, seed=w)
        assert {detector.add(e) for e in events} == {ACCEPTED}
        alerts += detector.advance(t + (w + 1) * W)
    assert detector.keys["ticker:A"].windows_seen == 33 and alerts == []


def test_before_the_first_close_every_open_window_counts_towards_warm_up() -> None:
    """Windows wait for advance() to close: one already late by the watermark still adds to windows_seen."""
    detector = Detector(settings(warmup_windows=2))
    base = int(START // W * W)
    for w in range(3):
        event = LabeledEvent(f"d{w}|ticker:D", "ticker", "D", base + w * W + 1, True, 0.9, f"D {w}", "")
        assert detector.add(event) == ACCEPTED
    assert detector.open[base + 2 * W]["ticker:D"].examples != []
    detector.advance()
    assert detector.keys["ticker:D"].windows_seen == 2  # so the third window may alert at its close
