"""A state record over the state topic's limit: saved without the open windows' event-id hashes (the
worker runs on, warned), or refused with a reason when even that is too large, on a real broker."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from alerts.config import AlertSettings
from alerts.detector import Detector
from alerts.state_codec import encode_state
from alerts.synthetic import make_events
from finsent.alert_state import StateStore, ensure_state_topic

pytestmark = pytest.mark.kafka


def busy_state(events: int) -> dict[str, object]:
    """A partition's state with `events` events counted in its open window (one key), each with a text
    of its own long enough to be kept as a text hash (`alerts.windows.MIN_REPEAT_WORDS`)."""
    detector = Detector(AlertSettings(keys=["ticker"]))
    made = make_events([{"ticker:A": (events, 0.1)}], window_s=900, start=1_700_000_100.0, seed=1)
    for i, event in enumerate(made):
        detector.add(replace(event, text=f"an analyst note on the shares of A {_word(i)}"))
    return {"version": 1, "detector": detector.snapshot()}


def _word(n: int) -> str:
    """A word of letters only for `n` (digits are not part of a text's words)."""
    letters = ""
    while True:
        n, r = divmod(n, 26)
        letters += chr(97 + r)
        if not n:
            return letters


def test_a_state_over_the_limit_is_saved_without_its_id_hashes_and_restores(
    broker: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    kw = {"bootstrap_servers": broker}
    ensure_state_topic(kw, f"state-{unique}")
    store = StateStore(kw, f"state-{unique}", "labeled", max_record_bytes=20_000)
    try:
        small, big = busy_state(50), busy_state(5_000)  # 16 bytes of hashes per event (its id and text)
        with caplog.at_level(logging.WARNING, logger="finsent.alert_state"):
            store.save({0: small, 1: big})
        assert "may be counted twice" in caplog.text and "labeled[1]" in caplog.text
        assert "labeled[0]" not in caplog.text
        found = store.load({0, 1})
        assert found[0] == small
        assert "id_hashes" not in str(found[1]) and "text_hashes" not in str(found[1])
        assert found[1]["detector"] != {}
        restored = Detector(AlertSettings(keys=["ticker"]))
        assert restored.restore(found[1]["detector"]) == []  # readable, counts kept
    finally:
        store.close()


def test_the_text_hashes_go_first_and_the_event_ids_stay_while_that_is_enough(
    broker: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Texts counted once doubled a busy window's hashes, and the record over the limit lost its event-id
    hashes too: a partition that kept replays counted once before lost that at half the rate."""
    kw = {"bootstrap_servers": broker}
    ensure_state_topic(kw, f"state-{unique}")
    state = busy_state(2_000)
    full = len(encode_state(state))
    store = StateStore(kw, f"state-{unique}", "labeled", max_record_bytes=full - 10_000)
    try:
        with caplog.at_level(logging.WARNING, logger="finsent.alert_state"):
            store.save({0: state})
        assert "without the open windows' text hashes" in caplog.text and "event-id" not in caplog.text
        saved = store.load({0})[0]
        assert "id_hashes" in str(saved) and "text_hashes" not in str(saved)
    finally:
        store.close()


def test_a_state_too_large_even_without_its_hashes_fails_with_the_reason(broker: str, unique: str) -> None:
    kw = {"bootstrap_servers": broker}
    ensure_state_topic(kw, f"state-{unique}")
    store = StateStore(kw, f"state-{unique}", "labeled", max_record_bytes=100)
    try:
        with pytest.raises(
            ValueError, match=r"even without its event-id hashes.*alerts\.max_keys or alerts\.key_ttl_windows"
        ):
            store.save({0: busy_state(500)})
    finally:
        store.close()
