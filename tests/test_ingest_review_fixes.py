"""Input validation found lacking in review: texts the model cannot read, RFC 3339 times, bounds checked
before costly work, invisible characters in one-line fields, duplicate fields and non-JSON numbers, and
dead-letter records within their size."""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from finsent.metrics import PipelineMetrics
from finsent.outputs.kafka_outputs import dead_letter_headers, dead_letter_record
from finsent.processing import UNREADABLE, Batch, BatchWriter, WriterConfig, label_batch
from inference.labeler import (
    OnnxLabeler,
    load_labeler,
    predictions,
    reread_text,
    unreadable_texts,
    word_tokens,
)
from inference.model_dir import default_model_dir
from inference.types import Prediction
from ingest import decode as decode_module
from ingest.decode import DecodeLimits, decode, has_content, parse_rfc3339, read_entities
from ingest.message import DeadLetter, KafkaMeta, Message
from tests.pipeline_helpers import FakeLabeler

META = KafkaMeta("raw", 2, 41, timestamp_ms=1_764_500_000_000, key=b"k")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LIMITS = DecodeLimits(max_message_bytes=2_000_000, max_text_chars=500)


def js(obj: object) -> bytes:
    return json.dumps(obj).encode()


def dec(value: bytes, limits: DecodeLimits = LIMITS) -> Message | DeadLetter:
    return decode(value, META, limits, NOW)


def refused(value: bytes, code: str, words: str, limits: DecodeLimits = LIMITS) -> None:
    out = dec(value, limits)
    assert isinstance(out, DeadLetter), (value[:60], out)
    assert (out.error, words in out.reason) == (code, True), (value[:60], out.error, out.reason)


# --- texts the model cannot read -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))


def test_word_tokens_leave_out_special_unknown_and_punctuation_tokens(tokenizer: Any) -> None:
    words = word_tokens(tokenizer)
    assert words.dtype == np.bool_ and len(words) == tokenizer.get_vocab_size(with_added_tokens=True)
    for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "$", "+", "%", "...", "##.", "##$", "©"):
        assert not words[tokenizer.token_to_id(token)], token
    for token in ("apple", "##s", "20", "##pl", "a", "漢", "link"):
        assert words[tokenizer.token_to_id(token)], token
    # every special token of the tokenizer is read from it, none named in code
    for token_id, added in tokenizer.get_added_tokens_decoder().items():
        assert not added.special or not words[token_id]


def test_unreadable_texts_is_per_text_over_all_its_chunks() -> None:
    words = np.array([False, True, False, True])  # ids 1 and 3 are words
    rows = [[0, 2, 0], [0, 2, 0], [0, 3, 0], [0, 1, 0], [], [0, 0]]
    owners = [0, 1, 1, 2, 3, 4]  # text 1 has two chunks, one with a word; text 3 an empty row
    assert unreadable_texts(rows, owners, 5, words).tolist() == [True, False, False, True, True]
    assert unreadable_texts([[0, 2], [0, 1]], [0, 1], 2, words).tolist() == [True, False]
    assert unreadable_texts([], [], 0, words).tolist() == []


def test_a_chunk_without_a_word_is_no_row_of_a_text_that_has_one(labeler: OnnxLabeler) -> None:
    """It would weigh in the label with the model's answer to an empty input: each row of a long text holds
    a word, and weighs its token count."""
    text = "Acme shares plunge after the SEC charges its CEO. " + "\U0001f680 " * 300 + "Acme falls."
    encoded = labeler.encode([text])
    assert len(encoded.rows) >= 2 and encoded.unreadable is not None and not encoded.unreadable[0]
    words = word_tokens(labeler.tokenizer)
    assert all(words[row].any() for row in encoded.rows)
    assert encoded.weights == [float(len(row) - 2) for row in encoded.rows]


def test_a_long_text_is_labeled_by_its_readable_chunks_only(labeler: OnnxLabeler) -> None:
    headline = "Acme shares plunge 40% after the SEC charges its CEO with fraud."
    alone = labeler.label([headline])[0]
    tailed = labeler.label([headline + " \U0001f680" * 300])[0]
    assert not tailed.unreadable and tailed.sentiment == alone.sentiment and tailed.topic == alone.topic
    assert abs(tailed.sentiment_score - alone.sentiment_score) < 0.05


def test_predictions_carry_the_flag() -> None:
    topic, sentiment = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])
    plain = predictions(topic, sentiment, ("a", "b"), ("neg", "pos"))
    assert [p.unreadable for p in plain] == [False, False]
    flagged = predictions(topic, sentiment, ("a", "b"), ("neg", "pos"), np.array([False, True]))
    assert [p.unreadable for p in flagged] == [False, True] and flagged[1].topic == "b"


@pytest.fixture(scope="module")
def labeler() -> OnnxLabeler:
    return load_labeler(threads=1)


UNREADABLE_TEXTS = [
    "🚀",
    "📉📉📉",
    "🚀🚀🚀 🌕",
    "🇺🇸",
    "a" * 100_000,  # one word past the tokenizer's 100 characters: one [UNK]
    "🚀 " * 600,  # past max_length: chunked, and no chunk has a word
    "+++",
    "$",
    "$$$",
    "=====",
    "|",
    "ตลาดหุ้นไทยปิดลบ",  # scripts the vocabulary lacks: every word is its unknown token
    "საფონდო ბირჟა დაეცა",
]
READABLE_TEXTS = [
    "$AAPL",
    "🚀 to the moon",
    "20%",
    "x",
    "漢",
    "Shares of Acme fell 20%.",
    "+++ . " * 200 + "up",
    # read again as `reread_text` spells them: styled letters folded, emoji set apart from words
    "𝐀𝐏𝐏𝐋 𝐜𝐫𝐚𝐬𝐡𝐞𝐬 𝐭𝐨𝐝𝐚𝐲",
    "①②③",
    "$GME🚀🚀🚀",
    "🚀🚀TSLA🚀🚀",
    "🚀 " * 5000 + "Acme shares rise.",  # 40 chunks of emoji before the words: the words are read
    "🙏🏻AAPL",
    "👍🏽TSLA",
    "1\ufe0f\u20e3NVDA",
]


def test_the_shipped_model_marks_texts_it_cannot_read(labeler: OnnxLabeler) -> None:
    texts = UNREADABLE_TEXTS + READABLE_TEXTS
    encoded = labeler.encode(texts)
    assert encoded.unreadable is not None
    expected = [True] * len(UNREADABLE_TEXTS) + [False] * len(READABLE_TEXTS)
    assert encoded.unreadable.tolist() == expected
    assert [p.unreadable for p in labeler.label_encoded(encoded)] == expected
    assert [p.unreadable for p in labeler.label(texts)] == expected  # the unstaged path too


class MarksRockets(FakeLabeler):
    """A fake whose model cannot read texts with a rocket in them."""

    def label(self, texts: Sequence[str]) -> list[Prediction]:
        out = super().label(texts)
        return [Prediction(*_fields(p), unreadable="🚀" in t) for p, t in zip(out, texts, strict=True)]


def _fields(p: Prediction) -> tuple[Any, ...]:
    return (p.topic, p.topic_score, p.sentiment, p.sentiment_score, p.topic_probs, p.sentiment_probs)


def messages(texts: list[str]) -> list[Message]:
    out = []
    for i, t in enumerate(texts):
        m = decode(js({"source": "s", "text": t}), KafkaMeta("raw", 0, i), DecodeLimits(), NOW)
        assert isinstance(m, Message)
        out.append(m)
    return out


def test_unreadable_texts_are_dead_lettered_as_unreadable_not_labeled() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    result = label_batch(MarksRockets(), messages(["a plunge", "🚀", "b"]), metrics)
    assert result.predictions[1] is None and result.predictions[0] and result.predictions[2]
    assert result.errors == {1: UNREADABLE} and result.codes == {1: "unreadable"}
    assert registry.get_sample_value("finsent_inference_errors_total") == 0.0
    # in the one-at-a-time fallback too, next to a text that fails
    fallback = label_batch(MarksRockets(fail_on="poison"), messages(["poison", "🚀", "b"]), metrics)
    assert fallback.predictions[0] is None and fallback.predictions[1] is None and fallback.predictions[2]
    assert fallback.codes == {1: "unreadable"} and "poison text" in fallback.errors[0]
    # a labeler that cannot tell changes nothing
    assert label_batch(FakeLabeler(), messages(["🚀"]), metrics).predictions[0] is not None


class RecordingKafka:
    """The two calls BatchWriter makes of KafkaOutputs when only dead letters and labeled events go out."""

    def __init__(self) -> None:
        self.dead: list[DeadLetter] = []
        self.labeled: list[bytes] = []

    def send_labeled(self, key: bytes, value: bytes) -> None:
        self.labeled.append(key)

    def send_dead_letter(self, dl: DeadLetter) -> None:
        self.dead.append(dl)

    def flush(self, stop: threading.Event | None = None) -> None:
        pass


def test_the_writer_dead_letters_them_with_their_code() -> None:
    registry, kafka = CollectorRegistry(), RecordingKafka()
    metrics = PipelineMetrics(registry)
    writer = BatchWriter(
        kafka=kafka,  # type: ignore[arg-type]
        es=None,
        config=WriterConfig(("all",), "t", True, False, None),
        metrics=metrics,
        model_version="fake-1",
        stop=threading.Event(),
    )
    batch_messages = messages(["fine", "🚀"])
    batch = Batch(records=list(batch_messages), offsets={}, ingested_at=NOW)
    writer.write(batch, label_batch(MarksRockets(), batch_messages, metrics))
    assert [(d.error, d.reason, d.meta.offset) for d in kafka.dead] == [("unreadable", UNREADABLE, 1)]
    assert len(kafka.labeled) == 1
    assert registry.get_sample_value("finsent_messages_dead_lettered_total", {"reason": "unreadable"}) == 1


# --- published_at as RFC 3339 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "utc"),
    [
        ("2026-11-30T09:30:00Z", datetime(2026, 11, 30, 9, 30, tzinfo=UTC)),
        ("2026-11-30t09:30:00z", datetime(2026, 11, 30, 9, 30, tzinfo=UTC)),  # RFC 3339 5.6 NOTE
        ("2026-11-30 09:30:00+01:00", datetime(2026, 11, 30, 8, 30, tzinfo=UTC)),
        ("2026-11-30T09:30:00.123456789-00:00", datetime(2026, 11, 30, 9, 30, 0, 123456, tzinfo=UTC)),
        ("2026-11-30T23:59:60Z", datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)),  # leap second
        ("2026-11-30T05:29:60.5+05:30", datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC)),
        # ISO 8601's offset without a colon, as many producers write it (Java's `Z` pattern): read as before
        ("2026-11-30T09:30:00+0100", datetime(2026, 11, 30, 8, 30, tzinfo=UTC)),
        ("2026-11-30T09:30:00.5-0000", datetime(2026, 11, 30, 9, 30, 0, 500000, tzinfo=UTC)),
    ],
)
def test_rfc3339_times_are_read(raw: str, utc: datetime) -> None:
    out = dec(js({"source": "s", "text": "t", "published_at": raw}))
    assert isinstance(out, Message) and out.published_at == utc, out


@pytest.mark.parametrize(
    "raw",
    [
        "2026-W48-1T00:00Z",  # ISO 8601 week date
        "2026-334T00:00:00Z",  # ordinal date
        "20261130T093000Z",  # basic format
        "2026-11-30T09Z",
        "2026-11-30T09:30Z",  # seconds are required
        "2026-11-30T09:30:00.Z",
        "2026-11-30T09:30:00,5Z",
        "2026-11-30T09:30:00+01:00:30.5",
        "2026-11-30T09:30:00+01",
        "2026-11-30T09:30:00 +01:00",
        "2026-11-30T09:30:00+05:60",
        "２０２６-11-30T09:30:00Z",
        "2026-11-30T09:30:00\u00a0Z",
    ],
)
def test_what_is_not_rfc3339_is_refused(raw: str) -> None:
    refused(js({"source": "s", "text": "t", "published_at": raw}), "schema", "not an RFC 3339 timestamp")


@pytest.mark.parametrize(
    "raw",
    ["2026-11-30T09:30:00+24:00", "2026-11-30T24:00:00Z", "2026-11-30T23:60:00Z", "2026-02-30T00:00:00Z"],
)
def test_an_rfc3339_shape_of_no_real_time_says_so(raw: str) -> None:
    refused(js({"source": "s", "text": "t", "published_at": raw}), "schema", "is no valid date and time")


def test_a_time_without_offset_keeps_its_reason() -> None:
    assert parse_rfc3339("2026-11-30T10:00:00") == datetime(2026, 11, 30, 10, 0)
    refused(js({"source": "s", "text": "t", "published_at": "2026-11-30T10:00:00"}), "schema", "timezone")


# --- bounds before costly checks -------------------------------------------------------------------------


def test_lengths_are_checked_before_reading_the_content(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_called(text: str) -> bool:
        if len(text) > 500:
            raise AssertionError(f"has_content read {len(text)} characters")
        return has_content(text)

    monkeypatch.setattr(decode_module, "has_content", not_called)
    refused(js({"source": "s", "text": "&#1;" * 200}), "oversized", "text has 800 characters")
    refused(
        js({"source": "s", "title": "\u200b" * 501, "body": "x"}), "oversized", "title has 501 characters"
    )
    refused(
        js({"source": "s", "title": "Fed", "body": "&nbsp;" * 90}), "oversized", "body has 540 characters"
    )
    # each part within the bound is read; together they are bounded only by the parts that stand in
    refused(js({"source": "s", "title": "\u200b" * 300, "body": "&nbsp;" * 50}), "empty_text", "no letter")
    out = dec(js({"source": "s", "title": "-" * 300, "body": "Acme shares fell. " * 20}))
    assert isinstance(out, Message) and out.text.startswith("Acme shares fell.")  # the dashes left out
    refused(js({"source": "s", "title": "Fed " * 75, "body": "x" * 300}), "oversized", "title and body")


def test_a_huge_blank_text_is_oversized() -> None:
    limits = DecodeLimits()
    refused(js({"source": "s", "text": "&#1;" * 240_000}), "oversized", "text has 960000 characters", limits)
    blank = json.dumps({"source": "s", "text": "\u200b" * 300_000}, ensure_ascii=False).encode()
    refused(blank, "oversized", "text has 300000 characters", limits)
    # title and body that stand in within the bound are read as before
    out = dec(js({"source": "s", "text": " ", "title": "Fed holds", "body": "x" * 490}))
    assert isinstance(out, Message) and len(out.text) == 500
    refused(js({"source": "s", "text": " ", "title": "Fed holds", "body": "x" * 491}), "oversized", "501")


# --- one-line fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({"source": "\u200b"}, "'source' holds an invisible"),
        ({"source": "\u202eswen"}, "'source' holds an invisible"),
        ({"source": "a\u2028b"}, "'source' holds an invisible"),
        ({"source": "a\u2029b"}, "'source' holds an invisible"),
        ({"source": "wire\u00ad"}, "'source' holds an invisible"),
        ({"source": "a\nb"}, "'source' holds a control"),
        ({"source": " "}, "'source' is empty"),
        ({"source": "---"}, "'source' is empty"),
        ({"source": "&nbsp;"}, "'source' is empty"),
        ({"source": ""}, "'source' is empty"),
        ({"id": "\u200b"}, "'id' holds an invisible"),
        ({"id": "a\nb"}, "'id' holds a control"),
        ({"id": "a\u202eb"}, "'id' holds an invisible"),
        ({"lang": "en\nERROR x"}, "'lang' holds a control"),
        ({"lang": "en\u200b"}, "'lang' holds an invisible"),
    ],
)
def test_one_line_fields_refuse_invisible_and_line_breaking_characters(
    obj: dict[str, str], words: str
) -> None:
    refused(js({"source": "s", "text": "Fed holds", **obj}), "schema", words)


def test_plain_one_line_fields_are_kept() -> None:
    for source in ("Reuters", "news wire 2", "日経", "📈", "$", "a&b", "S&P", "é"):
        out = dec(js({"source": source, "id": "é-1", "lang": "pt-BR", "text": "Fed holds"}))
        assert isinstance(out, Message) and out.source == source and out.id == "é-1", (source, out)


def test_ascii_fast_path_reads_as_unicode_does() -> None:
    slow = [unicodedata.category(c)[0] in "LNS" for c in map(chr, range(128))]
    assert [has_content(chr(i)) for i in range(128)] == slow
    assert [bool(decode_module._PLAIN_ASCII_NAME.fullmatch(chr(i))) for i in range(128)] == [
        ok and chr(i) != "&" for i, ok in enumerate(slow)
    ]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
def test_has_content_equals_its_unicode_reading(text: str) -> None:
    expected = any(unicodedata.category(c)[0] in "LNS" and c != "\ufffd" for c in read_entities(text))
    assert has_content(text) == expected


def test_title_lang_and_author_are_bounded() -> None:
    for name in ("title", "lang", "author"):
        refused(js({"source": "s", "text": "Fed holds", name: "x" * 501}), "schema", f"'{name}' has 501")
        out = dec(js({"source": "s", "text": "Fed holds", name: "x" * 500}))
        assert isinstance(out, Message)


# --- JSON ------------------------------------------------------------------------------------------------


def test_a_field_named_twice_is_refused() -> None:
    refused(
        b'{"source": "a", "text": "first", "source": "b", "text": "second"}', "schema", "'source' appears"
    )
    refused(b'{"source": "a", "text": "t", "published_at": "x", "published_at": "y"}', "schema", "appears")
    # fields the decoder does not read, and nested objects, may repeat names
    for raw in (
        b'{"source": "a", "text": "t", "x": 1, "x": 2}',
        b'{"source": "a", "text": "t", "m": {"text": 1, "text": 2}}',
    ):
        assert isinstance(dec(raw), Message)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_numbers_json_does_not_have_are_invalid_json(literal: str) -> None:
    refused(
        b'{"source": "s", "text": "t", "x": ' + literal.encode() + b"}", "invalid_json", literal.lstrip("-")
    )
    assert isinstance(dec(b'{"source": "s", "text": "t", "x": 1e300}'), Message)


def test_a_byte_order_mark_is_named() -> None:
    refused(b'\xef\xbb\xbf{"source": "s", "text": "t"}', "invalid_json", "byte order mark")


def test_body_is_checked_when_text_has_content() -> None:
    refused(js({"source": "s", "text": "t", "body": 3}), "schema", "'body' must be a string")
    refused(b'{"source": "s", "text": "t", "body": "\\ud800"}', "invalid_utf8", "'body'")
    assert isinstance(dec(js({"source": "s", "text": "t", "body": "unused"})), Message)


# --- dead-letter records ---------------------------------------------------------------------------------


def test_a_key_longer_than_max_bytes_leaves_no_negative_room() -> None:
    dl = DeadLetter("schema", "x", b"v" * 10_000, KafkaMeta("raw", 0, 1, None, b"k" * 5000))
    key, value, headers = dead_letter_record(dl, 2000)
    assert (key, value) == (b"k" * 2000, b"")
    assert (
        dict(headers)["finsent.key_truncated"] == b"5000" and dict(headers)["finsent.truncated"] == b"10000"
    )


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.integers(0, 30_000)),
    st.one_of(st.none(), st.integers(0, 9000)),
    st.integers(0, 20_000),
)
def test_a_dead_letter_never_exceeds_max_bytes(raw: int | None, key: int | None, max_bytes: int) -> None:
    value_in = None if raw is None else bytes(range(256)) * (raw // 256) + b"v" * (raw % 256)
    key_in = None if key is None else b"k" * key
    k, v, _ = dead_letter_record(
        DeadLetter("schema", "r", value_in, KafkaMeta("raw", 0, 1, None, key_in)), max_bytes
    )
    assert len(k or b"") + len(v or b"") <= max_bytes
    if value_in is not None and v is not None:
        assert value_in.startswith(v)  # the first bytes, never the last


@pytest.mark.parametrize(
    "reason", ["a" + "é" * 2048, "€" * 2000, "🚀" * 1025, "x" * 5000, "bad \ud800 " * 800]
)
def test_the_reason_header_is_cut_on_a_character_boundary(reason: str) -> None:
    header = dict(dead_letter_headers(DeadLetter("schema", reason, b"{}", KafkaMeta("raw", 0, 1))))
    text = header["finsent.reason"].decode("utf-8")  # never raises
    assert 4096 - 4 < len(header["finsent.reason"]) <= 4096
    assert reason.encode("utf-8", "replace").decode().startswith(text)


def test_reread_text_folds_styled_letters_and_sets_emoji_apart() -> None:
    assert reread_text("𝐀𝐏𝐏𝐋 𝐜𝐫𝐚𝐬𝐡𝐞𝐬", 100) == "APPL crashes"
    assert reread_text("$GME🚀🚀", 100).split() == ["$GME", "🚀", "🚀"]
    assert reread_text("🚀", 100) == " 🚀 " and reread_text("+++", 100) == "+++"
    assert reread_text("👍🏽TSLA", 100).split() == ["👍", "🏽", "TSLA"]  # a skin tone (Sk) too
    assert reread_text("1\ufe0f\u20e3NVDA", 100).split()[-1] == "NVDA"  # a keycap's enclosing mark (Me)


def test_reread_text_is_bounded_however_far_nfkc_lengthens_it() -> None:
    """U+FDFA folds to 18 characters: a 300 KB message grew to 1.8 million characters, 5 s to tokenize
    again (0.04 s for the first reading)."""
    assert len(reread_text("\ufdfa" * 100_000, 65_536)) == 65_536
    assert len(reread_text("🚀" * 100_000, 65_536)) == 65_536


def test_a_reread_text_takes_the_place_of_its_rows_only(labeler: OnnxLabeler) -> None:
    texts = ["Shares fell.", "$GME🚀🚀🚀", "🚀", "Acme beat estimates " + "and rose. " * 200]
    encoded = labeler.encode(texts)
    assert encoded.unreadable is not None and encoded.unreadable.tolist() == [False, False, True, False]
    assert sorted(set(encoded.owners)) == [0, 1, 2, 3] and encoded.owners == sorted(encoded.owners)
    plain = labeler.encode(["Shares fell.", "$GME 🚀 🚀 🚀"])
    assert encoded.rows[encoded.owners.index(1)] == plain.rows[1]
    assert encoded.rows[0] == plain.rows[0] and len(encoded.rows) == len(encoded.weights)
