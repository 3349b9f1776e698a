"""A text posted again under another message id counts once per key and window (`alerts.repeated_texts`).

Found in review: one account posting 100 copies of a negative text about a ticker of 40 messages per
window made a critical alert ("73 % vs baseline 10 %, 102 of 140 messages") whose three examples were the
same line; about a dozen copies fired one reliably."""

from __future__ import annotations

import json
from dataclasses import replace

from alerts.backtest import run_events
from alerts.config import AlertSettings
from alerts.detector import ACCEPTED, DUPLICATE, REPEATED, Detector
from alerts.events import LabeledEvent
from alerts.model import Alert
from alerts.synthetic import make_events
from alerts.windows import WindowAccumulator, text_hash
from finsent.alert_metrics import SKIP_REASONS

W = 60
BASE = AlertSettings(window_s=W, allowed_lateness_s=0)
BOT_TEXT = "$ACME is a FRAUD, SEC investigation incoming, sell now!!!"


def settings(**changes: object) -> AlertSettings:
    return AlertSettings(**{**BASE.model_dump(), **changes})


def flood(copies: int, start: float, text: str = BOT_TEXT) -> list[LabeledEvent]:
    """`copies` negative events of one text under as many message ids, spread over one window."""
    return [
        LabeledEvent(
            f"bot{i}|ticker:ACME", "ticker", "ACME", start + 1 + i * (W - 2) / copies, True, 0.97, text
        )
        for i in range(copies)
    ]


def campaign() -> list[LabeledEvent]:
    """Twelve windows of 40 messages at 10 % negative, then a window with 100 copies of one text."""
    normal = make_events([{"ticker:ACME": (40, 0.1)}] * 13, seed=5, window_s=W)
    last_start = normal[-1].ts // W * W
    return sorted(normal + flood(100, last_start), key=lambda e: e.ts)


def fired(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.opens_episode and a.key == "ACME"]


def test_a_copy_paste_campaign_is_one_voice_not_a_spike() -> None:
    once = run_events(BASE, campaign())
    assert fired(once.alerts) == []
    assert once.outcomes[REPEATED] == 99
    each = run_events(settings(repeated_texts="each"), campaign())
    (alert,) = fired(each.alerts)
    assert alert.severity == "critical" and REPEATED not in each.outcomes


def test_what_a_copy_changes_makes_no_new_text_but_a_word_does() -> None:
    """A second review got 100 copies past an exact match by adding a number, a t.co link, an emoji,
    "!!!" or an "RT @userN:" prefix to each."""
    d = Detector(BASE)
    start = 1_700_000_000 // W * W
    first = flood(1, start)[0]
    assert d.add(first) == ACCEPTED
    copies = (
        "  $acme IS a fraud,\tSEC investigation incoming, SELL now!!! ",
        BOT_TEXT + " #2",
        BOT_TEXT + " 17",
        BOT_TEXT + " https://t.co/AbC123",
        BOT_TEXT + " 🚨📉!!!",
        "RT @user9: " + BOT_TEXT,
        "@someone " + BOT_TEXT,
        # a third review: invisible characters split a word, other letter forms are other words
        BOT_TEXT.replace("FRAUD", "FRA\u200bUD"),  # zero-width space
        BOT_TEXT.replace("FRAUD", "FRA\u00adUD"),  # soft hyphen
        BOT_TEXT.replace("FRAUD", "FRA\u2060UD"),  # word joiner
        BOT_TEXT.replace("FRAUD", "FRA\U000e0020UD"),  # tag character
        BOT_TEXT.replace("FRAUD", "\U0001d405\U0001d411\U0001d400\U0001d414\U0001d403"),  # math bold
        BOT_TEXT.replace("FRAUD", "\uff26\uff32\uff21\uff35\uff24"),  # fullwidth
    )
    for i, copy in enumerate(copies):
        assert d.add(replace(first, event_id=f"copy{i}", text=copy)) == REPEATED, copy
    assert d.add(replace(first, event_id="c", text=BOT_TEXT + " and more")) == ACCEPTED, "another word"
    # accents and marks tell words apart in many languages: "sell" and "discuss" in Vietnamese
    vi_sell = "Nhà đầu tư bán cổ phiếu $ACME hôm nay"
    assert d.add(replace(first, event_id="vi1", text=vi_sell)) == ACCEPTED
    assert d.add(replace(first, event_id="vi2", text=vi_sell.replace("bán", "bàn"))) == ACCEPTED
    assert d.add(replace(first, event_id="vi3", text=vi_sell.replace("bán", "b\u200bán"))) == REPEATED
    assert d.add(first) == DUPLICATE, "a replay of a counted id is still a duplicate"
    assert d.add(replace(first, event_id="d", key="OTHER")) == ACCEPTED, "per key"
    assert d.add(replace(first, event_id="f", text="")) == ACCEPTED, "without text, the id alone tells"
    assert d.add(replace(first, event_id="g", text="")) == ACCEPTED
    for i, blank in enumerate((" ", "\n", "\xa0")):  # only whitespace says nothing either
        assert d.add(replace(first, event_id=f"blank{i}", text=blank)) == ACCEPTED, repr(blank)
    assert d.add(replace(first, event_id="e", ts=start + W + 1)) == ACCEPTED, "per window"


def test_repeated_texts_stay_repeated_across_a_restore_and_old_states_load() -> None:
    start = 1_700_000_000 // W * W
    d = Detector(BASE)
    copies = flood(3, start)
    assert d.add_many(copies[:2]) == [ACCEPTED, REPEATED]
    snap = json.loads(json.dumps(d.snapshot()))
    restored = Detector(BASE)
    restored.restore(snap)
    assert restored.add(copies[2]) == REPEATED
    (accs,) = snap["open"].values()
    acc = accs["ticker:ACME"]
    older = {k: v for k, v in acc.items() if k != "text_hashes"}  # saved before texts counted once
    loaded = WindowAccumulator.from_dict(older)
    assert loaded.n == 1 and loaded.texts == set()
    assert WindowAccumulator.from_dict(acc).texts == {text_hash(BOT_TEXT)}


def test_an_alert_shows_one_text_once_among_its_examples() -> None:
    """With `each` the copies count, but three examples of one line say less than one."""
    each = run_events(settings(repeated_texts="each"), campaign())
    (alert,) = fired(each.alerts)
    texts = [e.text for e in alert.examples]
    assert texts.count(BOT_TEXT) == 1 and len(texts) == len(set(texts))


def test_the_copies_have_a_skip_reason_of_their_own() -> None:
    assert REPEATED in SKIP_REASONS


def test_short_reactions_of_a_crowd_are_many_voices() -> None:
    """80 accounts posting "RIP $ACME" or "$ACME 📉" in a crash counted as a handful of messages, and the
    spike went unnoticed: texts of fewer than six words are told apart by their ids."""
    d = Detector(BASE)
    start = 1_700_000_000 // W * W
    phrases = ("RIP $ACME", "$ACME 📉", "sell $ACME now", "$ACME is done", "https://t.co/x")
    events = [
        LabeledEvent(f"r{i}|ticker:ACME", "ticker", "ACME", start + 1 + i * 0.5, True, 0.9, phrases[i % 5])
        for i in range(80)
    ]
    assert set(d.add_many(events)) == {ACCEPTED}
