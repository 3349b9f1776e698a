"""Tumbling event-time windows: alignment and the per-(window, key) accumulator.

The accumulator also holds a 64-bit hash of each event id seen in its window, so a replayed event is
counted once, and of each text (its words, `text_hash`), so that a text posted again (a copy-paste
campaign from many accounts, one story syndicated by several sources) counts once per key and window; the
hashes leave memory when the window closes (a replay after that is late anyway)."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
import sys
import unicodedata
from array import array
from dataclasses import dataclass, field
from typing import Any

from alerts.events import LabeledEvent


def window_start(ts: float, size: int) -> int:
    """Start (epoch seconds) of the tumbling window of `size` seconds holding `ts`."""
    return math.floor(ts / size) * size


def id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (not `hash()`: it must survive restarts and hosts). At a
    million ids per window the chance that two collide, and one event is dropped, is about 3e-8."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


# What a copy may change and still be the same text: links, @handles, a retweet's "RT", digits,
# punctuation and emoji (a bot appends a counter, a t.co link or "!!!" to get past an exact match).
_LINK = re.compile(r"(?:https?://|www\.)\S+")
_HANDLE = re.compile(r"@\w+")
_NOT_A_WORD = re.compile(r"[^\w\s]|[\d_]")
# A text of fewer words is never a repeat: "RIP $ACME" or "$ACME 📉" from eighty accounts in a crash
# are eighty voices, not one campaign.
MIN_REPEAT_WORDS = 6


def text_hash(text: str) -> int | None:
    """`id_hash` of what a copy keeps of the text: its words (`_plain_letters`), lower-cased, without
    links, @handles, a leading "RT", digits, punctuation and emoji. None for a text of fewer than
    MIN_REPEAT_WORDS such words: short reactions (and texts that are only whitespace or a link) are told
    apart by their ids."""
    words = _NOT_A_WORD.sub(" ", _HANDLE.sub(" ", _LINK.sub(" ", _plain_letters(text).lower()))).split()
    if words[:1] == ["rt"]:
        words = words[1:]
    return id_hash(" ".join(words)) if len(words) >= MIN_REPEAT_WORDS else None


def _plain_letters(text: str) -> str:
    """`text` as a reader sees it: compatibility forms folded (math-bold or fullwidth letters are the
    letters, NFKC) and invisible characters gone (format characters: zero-width spaces, soft hyphens, word
    joiners, tag characters; variation selectors). A copy sprinkled with those must not be another text,
    and an invisible character must not split a word in two. Accents and other combining marks stay: in
    Vietnamese, Hindi or Japanese they tell words apart (bán / bàn, バス / パス)."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_invisible())


@functools.cache
def _invisible() -> dict[int, None]:
    """Code points of the format characters (Cf) and variation selectors, mapped to nothing."""
    selectors = (*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0))
    return {
        **{cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Cf"},
        **dict.fromkeys(selectors),
    }


def pack_hashes(hashes: array[int]) -> str:
    """Little-endian uint64s, base64: 8 bytes per id instead of a ~40-byte string, and no sort (the
    order is the order of arrival, which a restored accumulator keeps, so snapshots are reproducible)."""
    if sys.byteorder == "big":
        hashes = array("Q", hashes)
        hashes.byteswap()
    return base64.b64encode(hashes.tobytes()).decode("ascii")


def unpack_hashes(text: str) -> array[int]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 8:
        raise ValueError("packed id hashes are not a whole number of uint64s")
    values = array("Q", raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _hash_array() -> array[int]:
    return array("Q")


# What a stored entry that this version cannot read raises when it is decoded: it is dropped alone.
UNREADABLE = (AttributeError, KeyError, TypeError, ValueError, IndexError)

# What `WindowAccumulator.add` did with an event.
COUNTED = "counted"
SEEN_ID = "seen_id"  # its id was counted already (a replay)
REPEATED_TEXT = "repeated_text"  # a new id whose text was counted already


@dataclass
class WindowAccumulator:
    """Counts of one key in one window, plus its most negative examples."""

    n: int = 0
    neg: int = 0
    neg_w: float = 0.0
    ids: set[int] = field(default_factory=set)
    order: array[int] = field(default_factory=_hash_array)  # `ids` in order of arrival, for snapshots
    examples: list[tuple[float, str, str]] = field(default_factory=list)
    texts: set[int] = field(default_factory=set)
    text_order: array[int] = field(default_factory=_hash_array)  # `texts` in order of arrival

    def add(self, event: LabeledEvent, max_examples: int, *, texts_once: bool = True) -> str:
        """Count the event once: SEEN_ID when its id was counted already, REPEATED_TEXT (with
        `texts_once`) when its text was, under another id; else COUNTED. An event without text is
        told by its id alone."""
        h = id_hash(event.event_id)
        if h in self.ids:
            return SEEN_ID
        self.ids.add(h)
        self.order.append(h)
        t = text_hash(event.text) if texts_once else None
        if t is not None:
            if t in self.texts:
                return REPEATED_TEXT
            self.texts.add(t)
            self.text_order.append(t)
        self.n += 1
        self.neg += 1 if event.negative else 0
        self.neg_w += event.negative_prob
        if (
            max_examples
            and event.text
            and (event.negative or event.negative_prob >= 0.5)
            and all(e[1] != event.text for e in self.examples)  # evidence of one text, shown once
        ):
            self.examples.append((event.negative_prob, event.text, event.url))
            self.examples.sort(key=lambda e: -e[0])
            del self.examples[max_examples:]
        return COUNTED

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "n": self.n,
            "neg": self.neg,
            "neg_w": self.neg_w,
            "id_hashes": pack_hashes(self.order),
            "examples": [list(e) for e in self.examples],
        }
        if self.text_order:
            data["text_hashes"] = pack_hashes(self.text_order)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowAccumulator:
        """Reads both forms: `id_hashes` (packed) and the older `ids` (a list of id strings). A state
        saved before texts were counted once has no `text_hashes`: its open windows then count a text
        again once more."""
        order = unpack_hashes(data["id_hashes"]) if "id_hashes" in data else _hash_array()
        order.extend(id_hash(str(i)) for i in data.get("ids") or ())
        text_order = unpack_hashes(data["text_hashes"]) if "text_hashes" in data else _hash_array()
        return cls(
            n=int(data["n"]),
            neg=int(data["neg"]),
            neg_w=float(data["neg_w"]),
            ids=set(order),
            order=order,
            examples=[(float(p), str(t), str(u)) for p, t, u in data.get("examples") or ()],
            texts=set(text_order),
            text_order=text_order,
        )


def open_events(raw: dict[str, Any]) -> int:
    """How many events the open windows of a snapshot hold (what dropping them leaves uncounted)."""
    total = 0
    for accs in raw.values():
        for data in accs.values() if isinstance(accs, dict) else ():
            try:
                total += int(data["n"])
            except UNREADABLE:
                continue
    return total


def restore_windows(start: str, raw: dict[str, Any], warnings: list[str]) -> dict[str, WindowAccumulator]:
    """The open-window accumulators of one window start; an unreadable one is noted and dropped."""
    accs: dict[str, WindowAccumulator] = {}
    for key_id, data in raw.items():
        try:
            accs[key_id] = WindowAccumulator.from_dict(data)
        except UNREADABLE as exc:
            warnings.append(f"stored open window {start} of key {key_id} unusable ({exc!r}), dropped")
    return accs
