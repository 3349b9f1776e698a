"""A new labeling model (the labeled events' `model_version`) is a model change: each partition's detector
re-learns its keys' baselines instead of alerting on the new model's calibration (`alerts.model_change`).

The review's scenario: a retrained model that labels 12 points more texts negative opened 27 episodes on
30 keys within hours, median 14.5 h long, with nothing saying a model changed."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable

import pytest

from alerts.alert_text import model_change_note
from alerts.config import AlertSettings
from alerts.detector import MODEL_RETURN_AFTER_S, MODEL_VERSIONS_KEPT, Detector
from alerts.events import MODEL_VERSION_MAX_CHARS, LabeledEvent, parse_event
from alerts.model import Alert
from alerts.notifiers.render import resolve_summary
from alerts.state_codec import decode_state, encode_state

W = 60
V1, V2, V3 = "finsent-minilm-a+cpu.aaaaaaaa", "finsent-minilm-b+cpu.bbbbbbbb", "finsent-minilm-c+cpu.cccccccc"
KEYS = {f"src{k}": 0.10 + 0.02 * k for k in range(6)}  # the keys' own levels, 10..20 % negative
Version = Callable[[int, int], str]  # (window, event index) -> model_version


def cfg(**changes: object) -> AlertSettings:
    return AlertSettings(window_s=W, allowed_lateness_s=0, **changes)


def window(
    w: int,
    version: str | Version,
    *,
    shift: float = 0.0,
    n: int = 60,
    seed: int = 0,
    keys: dict[str, float] = KEYS,
) -> list[LabeledEvent]:
    """`n` events per key in window `w`, in time order, each key at its own level plus `shift`; the
    version is a string, or a function of (window, event index)."""
    rng = random.Random(f"{seed}:{w}")
    out = []
    for key, level in keys.items():
        for i in range(n):
            negative = rng.random() < level + shift
            out.append(
                LabeledEvent(
                    event_id=f"{key}:{w}:{i}",
                    key_type="source",
                    key=key,
                    ts=w * W + rng.uniform(0.0, W - 1e-3),
                    negative=negative,
                    negative_prob=float(negative),
                    model_version=version if isinstance(version, str) else version(w, i),
                )
            )
    return sorted(out, key=lambda e: e.ts)


def run(
    d: Detector,
    windows: range,
    version: str | Version,
    *,
    shift: float = 0.0,
    n: int = 60,
    seed: int = 0,
    keys: dict[str, float] = KEYS,
) -> list[Alert]:
    """Feed the windows, each event labeled when published (`now` = its time); the transitions."""
    out: list[Alert] = []
    for w in windows:
        for e in window(w, version, shift=shift, n=n, seed=seed, keys=keys):
            d.add(e, e.ts)
        out += d.advance()
    out += d.advance(windows.stop * W)
    return out


def fired(alerts: list[Alert], since_window: int = 0) -> list[Alert]:
    return [a for a in alerts if a.opens_episode and a.starts_at >= since_window * W]


SWITCH = 40  # windows of the old model before the new one


def test_a_retrained_models_shift_alerts_on_every_key_when_baselines_are_kept() -> None:
    """The review's storm, as `model_change: keep` still has it (the old behaviour): the detector learns
    a lasting shift only slowly (`anomalous_ewma_alpha`), so most keys fire."""
    d = Detector(cfg(model_change="keep"))
    run(d, range(SWITCH), V1)
    after = run(d, range(SWITCH, SWITCH + 30), V2, shift=0.15)
    assert len({a.key for a in fired(after)}) >= 4, [a.summary for a in after]
    assert d.model_changes == 1  # noticed and counted, nothing more
    assert all(state.windows_seen == SWITCH + 30 for state in d.keys.values())


def test_model_change_relearns_instead_of_alerting_and_a_real_spike_still_fires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="alerts.detector")
    s = cfg()
    d = Detector(s)
    assert s.model_change == "relearn"
    run(d, range(SWITCH), V1)
    # the new model labels 15 points more texts negative, on every key, for good
    relearning = run(d, range(SWITCH, SWITCH + s.warmup_windows), V2, shift=0.15)
    assert relearning == []
    assert d.model_changes == 1
    assert all(state.windows_seen == s.warmup_windows for state in d.keys.values())
    calm = run(d, range(SWITCH + s.warmup_windows, SWITCH + 30), V2, shift=0.15)
    assert fired(calm) == [], [a.summary for a in calm]
    # a spike on one key after re-learning: 35 points above the new level
    spiked = {**KEYS, "src0": KEYS["src0"] + 0.35}
    spike = run(d, range(SWITCH + 30, SWITCH + 32), V2, shift=0.15, keys=spiked)
    assert [a.key for a in fired(spike)] == ["src0"]
    changes = [r for r in caplog.records if "now come from model" in r.getMessage()]
    assert len(changes) == 1 and changes[0].levelno == logging.WARNING
    assert V2 in changes[0].getMessage() and V1 in changes[0].getMessage()
    assert "6 keys re-learn" in changes[0].getMessage()


def test_a_firing_alert_resolves_at_the_change_saying_why_and_fires_again_after_relearning() -> None:
    s = cfg()
    d = Detector(s)
    run(d, range(SWITCH), V1)
    spiked = {**KEYS, "src0": 0.7}
    first = run(d, range(SWITCH, SWITCH + 2), V1, keys=spiked)
    assert [a.key for a in fired(first)] == ["src0"]
    assert [a.key for a in d.firing()] == ["src0"]
    # the spike goes on, now labeled by the new model
    out = run(d, range(SWITCH + 2, SWITCH + 3), V2, keys=spiked)
    (done,) = [a for a in out if a.status == "resolved"]
    assert done.key == "src0" and done.summary.endswith(f"(resolved: {model_change_note(V2)})")
    assert "alert ended, model changed to" in resolve_summary(done)
    assert "back to normal" not in resolve_summary(done)
    assert d.firing() == []
    # no alert while re-learning, however high the share (the window completing warm-up is not tested)
    assert fired(run(d, range(SWITCH + 3, SWITCH + 2 + s.warmup_windows), V2, keys=spiked)) == []
    # the key's new baseline holds the spike: a spike that comes on top of that fires
    again = run(
        d, range(SWITCH + 2 + s.warmup_windows, SWITCH + 4 + s.warmup_windows), V2, keys={"src0": 1.0}
    )
    assert [a.key for a in fired(again)] == ["src0"]


def test_a_rolling_update_alternating_two_versions_relearns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alerts.detector")
    s = cfg()
    d = Detector(s)
    run(d, range(SWITCH), V1)
    # four windows of old and new labelers taking turns, then the new one alone
    rng = random.Random(5)
    run(d, range(SWITCH, SWITCH + 4), lambda w, i: rng.choice((V1, V2)), shift=0.15)
    run(d, range(SWITCH + 4, SWITCH + 12), V2, shift=0.15)
    assert d.model_changes == 1
    assert len([r for r in caplog.records if "now come from model" in r.getMessage()]) == 1
    assert all(state.windows_seen == 12 for state in d.keys.values())  # re-learning began once, at SWITCH
    assert list(d.model_versions) == [V1, V2]


def test_versions_side_by_side_for_good_are_one_change_and_a_rollback_is_another() -> None:
    """CPU and GPU labelers side by side (two versions for good) change nothing after the first; a
    version back after another labeled alone for over an hour is a rollback, a change again."""
    one = {"src0": 0.1}
    d = Detector(cfg())
    hour = int(MODEL_RETURN_AFTER_S // W)
    run(d, range(10), V1, n=4, keys=one)
    run(d, range(10, 10 + 3 * hour), lambda w, i: (V1, V2)[i % 2], n=4, keys=one)
    assert d.model_changes == 1
    run(d, range(10 + 3 * hour, 10 + 4 * hour + 5), V2, n=4, keys=one)  # V1 gone for over an hour
    assert d.model_changes == 1
    run(d, range(10 + 4 * hour + 5, 10 + 4 * hour + 8), V1, n=4, keys=one)  # rolled back
    assert d.model_changes == 2
    assert d.keys["source:src0"].windows_seen == 3
    assert list(d.model_versions) == [V2, V1]


def test_an_old_version_back_within_the_hour_is_no_change() -> None:
    """Stragglers of a rolling update (or of the labeler it replaced) come within minutes."""
    one = {"src0": 0.1}
    d = Detector(cfg())
    run(d, range(10), V1, n=4, keys=one)
    run(d, range(10, 40), V2, n=4, keys=one)  # 30 minutes of the new model alone
    run(d, range(40, 42), V1, n=4, keys=one)
    assert d.model_changes == 1


def one_event(w: int, version: str, key: str = "src0") -> LabeledEvent:
    """One event of `key` in the middle of window `w`, labeled by `version`."""
    return LabeledEvent(
        event_id=f"{key}:{w}:{version}:late",
        key_type="source",
        key=key,
        ts=w * W + W / 2,
        negative=False,
        negative_prob=0.0,
        model_version=version,
    )


def test_an_old_version_labeled_long_ago_and_read_late_is_no_rollback() -> None:
    """A producer that flushes a buffer late: events the old version labeled just before the switch,
    read after the new version has labeled alone for over an hour. Their labeling time is old: the old
    version was not back after the hour, so no rollback (the new one did label alone that long)."""
    one = {"src0": 0.1}
    d = Detector(cfg())
    hour = int(MODEL_RETURN_AFTER_S // W)
    run(d, range(10), V1, n=4, keys=one)
    run(d, range(10, 10 + hour + 10), V2, n=4, keys=one)  # the new model alone for over an hour
    assert d.model_changes == 1
    v1_last = d.model_versions[V1]
    # the buffered V1 events, labeled (`now`) before the switch, arrive now
    for w in (8, 9):
        late = one_event(w, V1)
        d.add(late, late.ts)
    assert d.model_versions[V2] - v1_last > MODEL_RETURN_AFTER_S  # the other half alone would say yes
    assert d.model_changes == 1
    assert d.keys["source:src0"].windows_seen == hour + 10  # still learning from the switch, not again
    # and V2 goes on: it never went away, nothing to change back to
    run(d, range(10 + hour + 10, 10 + hour + 12), V2, n=4, keys=one)
    assert d.model_changes == 1


def test_an_old_version_back_after_a_short_canary_and_a_quiet_spell_is_no_rollback() -> None:
    """A canary version labels for 10 minutes, then the partition is quiet for 2 hours, then the old
    version again: the canary never labeled alone for an hour, so the old one coming back is no rollback
    (however long since it last labeled)."""
    one = {"src0": 0.1}
    d = Detector(cfg())
    hour = int(MODEL_RETURN_AFTER_S // W)
    run(d, range(30), V1, n=4, keys=one)
    run(d, range(30, 40), V2, n=4, keys=one)  # the canary: new, one change
    assert d.model_changes == 1
    back = 40 + 2 * hour  # two quiet hours
    run(d, range(back, back + 5), V1, n=4, keys=one)
    assert back * W - d.model_versions[V2] > MODEL_RETURN_AFTER_S  # the other half alone would say yes
    assert d.model_changes == 1
    assert list(d.model_versions) == [V2, V1]


def test_forgotten_versions_are_new_again_and_events_without_a_version_change_nothing() -> None:
    one = {"src0": 0.1}
    d = Detector(cfg())
    run(d, range(3), "", n=4, keys=one)  # synthetic events, older labelers: unknown
    assert d.model_versions == {} and d.model_changes == 0
    versions = [f"v{i}" for i in range(MODEL_VERSIONS_KEPT + 1)]
    for w, version in enumerate(versions, start=3):
        run(d, range(w, w + 1), version, n=4, keys=one)
    assert d.model_changes == MODEL_VERSIONS_KEPT
    assert list(d.model_versions) == versions[1:]
    run(d, range(20, 21), "", n=4, keys=one)
    assert d.model_changes == MODEL_VERSIONS_KEPT
    run(d, range(21, 22), versions[0], n=4, keys=one)  # forgotten: a change
    assert d.model_changes == MODEL_VERSIONS_KEPT + 1


def test_restoring_a_snapshot_without_versions_does_not_relearn() -> None:
    """A state saved by a release that kept no model versions: the first version seen after restoring
    is the one its baselines are of, recorded, not a change; a later new one is."""
    s = cfg()
    old = Detector(s)
    run(old, range(SWITCH), "")  # what such a release learned (it did not read versions)
    snap = json.loads(json.dumps(old.snapshot()))
    del snap["model_versions"], snap["model_change_resolve"]
    d = Detector(s)
    assert d.restore(snap) == []
    assert d.model_versions == {}
    run(d, range(SWITCH, SWITCH + 2), V1)
    assert d.model_changes == 0 and list(d.model_versions) == [V1]
    assert all(state.windows_seen == SWITCH + 2 for state in d.keys.values())
    run(d, range(SWITCH + 2, SWITCH + 3), V2)
    assert d.model_changes == 1
    assert all(state.windows_seen == 1 for state in d.keys.values())


def test_snapshot_round_trip_keeps_the_versions_and_a_resolve_still_due() -> None:
    s = cfg()
    d = Detector(s)
    run(d, range(SWITCH), V1)
    run(d, range(SWITCH, SWITCH + 2), V1, keys={**KEYS, "src0": 0.7})
    assert [a.key for a in d.firing()] == ["src0"]
    # the change is noticed while adding; the state is saved before the next advance()
    for e in window(SWITCH + 2, V2, keys={**KEYS, "src0": 0.7}):
        d.add(e, e.ts)
    assert d.model_changes == 1
    snap = decode_state(encode_state(d.snapshot()))
    assert snap["model_versions"] == [[V1, pytest.approx(d.model_versions[V1])], [V2, d.model_versions[V2]]]
    restored = Detector(s)
    assert restored.restore(snap) == []
    assert restored.model_versions == d.model_versions
    (done,) = restored.advance()
    assert done.status == "resolved" and done.summary.endswith(f"(resolved: {model_change_note(V2)})")
    assert restored.firing() == []
    # both versions known after the restore: the rolling update's old one is no change
    run(restored, range(SWITCH + 3, SWITCH + 4), lambda w, i: (V1, V2)[i % 2])
    assert restored.model_changes == 0
    run(restored, range(SWITCH + 4, SWITCH + 5), V3)
    assert restored.model_changes == 1


def test_garbled_stored_versions_are_dropped_not_the_state() -> None:
    s = cfg()
    d = Detector(s)
    run(d, range(3), V1, n=4)
    snap = d.snapshot()
    snap["model_versions"] = [["ok", 1.0], "x", [1, 2.0], ["", 3.0], ["nan", float("nan")], ["b", True], None]
    snap["model_change_resolve"] = 7
    restored = Detector(s)
    assert restored.restore(snap) == []
    assert restored.model_versions == {"ok": 1.0}
    assert restored.advance() == []
    snap["model_versions"] = "not a list"
    assert restored.restore(snap) == [] and restored.model_versions == {}


def test_parse_event_reads_the_model_version() -> None:
    base = {
        "event_id": "m1|ticker:ACME",
        "key_type": "ticker",
        "key": "ACME",
        "published_at": "2026-11-20T00:00:00Z",
        "sentiment": "negative",
    }
    assert parse_event({**base, "model_version": V1}, "negative").model_version == V1
    assert parse_event(base, "negative").model_version == ""  # older labelers, synthetic events
    assert parse_event({**base, "model_version": 3}, "negative").model_version == ""
    assert parse_event({**base, "model_version": None}, "negative").model_version == ""
    forged = parse_event({**base, "model_version": "v2\nFIRING critical"}, "negative").model_version
    assert "\n" not in forged and forged.startswith("v2")
    long = parse_event({**base, "model_version": "v" * 1000}, "negative").model_version
    assert len(long) == MODEL_VERSION_MAX_CHARS


def test_the_note_keeps_parentheses_out_of_the_resolve_reason() -> None:
    note = model_change_note("v2 (recalibrated)")
    assert "(" not in note and ")" not in note and note.startswith("model changed to v2 [recalibrated]")
