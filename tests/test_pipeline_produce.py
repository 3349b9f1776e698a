"""`finsent produce`: JSONL and CSV files replayed into a topic (at a rate), read back unchanged; the input
streamed (records sent while a pipe is still being written), progress without a record total, an input
that breaks off part-way."""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from finsent.cli import main
from finsent.produce import InputError, Record, open_input, progress_line, replay
from tests.pipeline_helpers import read_topic
from tests.servers import Noida, create_topic


def read_all(path: Path, *, source: str | None = None) -> list[Record]:
    """Every record of the file, read as `finsent produce` reads it."""
    with open_input(path, source=source) as replay_input:
        return list(replay_input.records)


def produce_cli(monkeypatch: pytest.MonkeyPatch, broker: str, path: Path, topic: str) -> int:
    """`finsent produce PATH --topic TOPIC` against `broker`, as a user runs it; its exit code."""
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", broker)
    return main(["produce", str(path), "--topic", topic])


def test_read_jsonl_keeps_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError, not ValueError
    f.write_text(
        '{"id": "a", "source": "s", "text": "x"}\n\nnot json\n{"source": "s", "text": "y"}\r\n' + deep + "\n"
    )
    assert read_all(f) == [
        (b"a", b'{"id": "a", "source": "s", "text": "x"}'),
        (None, b"not json"),
        (None, b'{"source": "s", "text": "y"}'),
        (None, deep.encode()),
    ]


def test_read_csv_text_column(tmp_path: Path, shared_data: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text('text,label,tickers\n"Fed holds, again",2,"AAPL;MSFT"\nplain,0,\n', encoding="utf-8")
    rows = [json.loads(v) for _, v in read_all(f)]
    assert rows == [
        {"source": "csv:s", "text": "Fed holds, again", "tickers": ["AAPL", "MSFT"]},
        {"source": "csv:s", "text": "plain"},
    ]
    with open_input(shared_data / "tfns-sentiment" / "train.csv", source="tfns") as replay_input:
        first = next(replay_input.records)
    assert json.loads(first[1])["source"] == "tfns"
    bad = tmp_path / "b.csv"
    bad.write_text("title\nx\n")
    with pytest.raises(InputError, match="needs a `text` column"):
        read_all(bad)


def test_replay_rate_and_cli(
    broker: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"produce-{unique}"
    create_topic(broker, topic, 2)
    f = tmp_path / "s.jsonl"
    f.write_text(
        "".join(json.dumps({"id": f"m{i}", "source": "s", "text": f"t{i}"}) + "\n" for i in range(20))
    )
    producer = KafkaProducer(bootstrap_servers=broker)
    started = time.monotonic()
    with open_input(f) as replay_input:
        assert replay(producer, topic, replay_input.records, rate=50, limit=10).sent == 10
    assert time.monotonic() - started >= 0.15
    producer.close()
    assert produce_cli(monkeypatch, broker, f, topic) == 0
    assert "sent 20 records" in capsys.readouterr().out
    got = read_topic(broker, topic, expected=30, settle_s=0.3)
    assert len(got) == 30
    assert sorted({r.key for r in got}) == sorted({f"m{i}".encode() for i in range(20)})


def test_the_cli_replays_a_csv_cell_longer_than_the_csv_modules_default_limit(
    broker: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A long filing's body is over csv's default cell limit (128 Ki characters): `finsent` raises the
    process-wide limit once, at start, instead of a module doing it when imported."""
    topic = f"produce-long-{unique}"
    create_topic(broker, topic, 1)
    body = "Net revenue rose. " * 12_000  # 216,000 characters
    f = tmp_path / "filings.csv"
    f.write_text(f'id,text\nf1,"{body}"\n')
    default = csv.field_size_limit(128 * 1024)  # as a fresh process has it
    try:
        assert produce_cli(monkeypatch, broker, f, topic) == 0
    finally:
        csv.field_size_limit(default)
    assert "sent 1 records" in capsys.readouterr().out
    (got,) = read_topic(broker, topic, expected=1, settle_s=0.3)
    assert json.loads(got.value)["text"] == body


def test_records_that_were_not_written_are_reported_not_counted_as_sent(
    broker: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"produce-fail-{unique}"
    create_topic(broker, topic, 1)
    f = tmp_path / "s.jsonl"
    big = json.dumps({"id": "big", "source": "s", "text": "x" * 2_000_000})
    f.write_text(
        "\n".join([json.dumps({"source": "s", "text": "a"}), big, json.dumps({"source": "s", "text": "b"})])
    )
    producer = KafkaProducer(bootstrap_servers=broker)  # max_request_size 1 MiB
    with open_input(f) as replay_input:
        result = replay(producer, topic, replay_input.records)
    producer.close()
    assert (result.sent, result.failed) == (2, 1) and "MessageSizeTooLarge" in str(result.first_error)
    assert produce_cli(monkeypatch, broker, f, topic) == 1
    out = capsys.readouterr()
    assert "sent 2 records" in out.out and "1 records were NOT written" in out.err


def test_a_pipe_is_read_once_and_replayed(
    noida: Noida,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pipe (`producer | finsent produce /dev/stdin`) can be read only once: the check before connecting
    (its first record) and the replay come from that one read."""
    topic = f"produce-pipe-{unique}"
    create_topic(noida.kafka, topic, 1)
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    lines = "".join(json.dumps({"id": f"p{i}", "source": "s", "text": f"t{i}"}) + "\n" for i in range(7))

    def feed() -> None:
        with fifo.open("w") as w:  # blocks until the reader opens the pipe
            w.write(lines)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert produce_cli(monkeypatch, noida.kafka, fifo, topic) == 0
    writer.join(timeout=10)
    assert "sent 7 records" in capsys.readouterr().out
    got = read_topic(noida.kafka, topic, expected=7, settle_s=0.3)
    assert sorted(r.key for r in got) == sorted(f"p{i}".encode() for i in range(7))


def jsonl(prefix: str, n: int) -> str:
    return "".join(
        json.dumps({"id": f"{prefix}{i}", "source": "s", "text": f"t{i}"}) + "\n" for i in range(n)
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    os.mkfifo(path)
    return path


def test_records_are_sent_while_the_input_is_still_being_written(
    noida: Noida,
    unique: str,
    fifo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A replay streams: the first records reach the broker while the writer still holds the rest back
    (a version that read the whole input first would wait for the writer to finish)."""
    topic = f"produce-stream-{unique}"
    create_topic(noida.kafka, topic, 1)
    seen_early: list[int] = []

    def feed() -> None:
        with fifo.open("w") as w:
            w.write(jsonl("a", 3))
            w.flush()
            seen_early.append(len(read_topic(noida.kafka, topic, expected=3, timeout_s=20, settle_s=0)))
            w.write(jsonl("b", 4))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert produce_cli(monkeypatch, noida.kafka, fifo, topic) == 0
    writer.join(timeout=30)
    assert seen_early == [3], "no record reached the broker before the writer finished"
    assert "sent 7 records" in capsys.readouterr().out
    assert len(read_topic(noida.kafka, topic, expected=7, settle_s=0.3)) == 7


def silent_writer(fifo: Path, release: threading.Event) -> threading.Thread:
    """Writes two records into the pipe, then holds it open without writing until `release`."""

    def feed() -> None:
        with fifo.open("w") as w:
            w.write(jsonl("a", 2))
            w.flush()
            release.wait(10)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer


def test_a_limit_stops_reading_at_the_limit(fifo: Path) -> None:
    """Past `--limit` nothing is read: a pipe's writer is not waited on for a record that is not sent."""
    release = threading.Event()
    silent_writer(fifo, release)
    sent: list[bytes | None] = []
    producer = RecordingProducer(sent)
    try:
        started = time.monotonic()
        with open_input(fifo) as replay_input:
            assert replay(producer, "t", replay_input.records, limit=2).sent == 2  # type: ignore[arg-type]
            assert time.monotonic() - started < 5  # not waiting for the writer, which holds the pipe open
    finally:
        release.set()
    assert sent == [b"a0", b"a1"]


def test_progress_goes_on_while_the_pipe_is_silent(fifo: Path) -> None:
    """A writer that stops writing (tail -f on a quiet log) must not look like a hung replay."""
    release = threading.Event()
    writer = silent_writer(fifo, release)
    reports: list[int] = []

    def progress(sent: int, elapsed_s: float) -> None:
        reports.append(sent)
        if len(reports) >= 3:
            release.set()  # the writer closes the pipe: the replay ends

    sent: list[bytes | None] = []
    with open_input(fifo) as replay_input:
        result = replay(
            RecordingProducer(sent),  # type: ignore[arg-type]
            "t",
            replay_input.records,
            progress=progress,
            progress_every_s=0.05,
        )
    writer.join(timeout=10)
    assert result.sent == 2 and sent == [b"a0", b"a1"]
    assert len(reports) >= 3 and reports[2] == 2  # reported while blocked on the silent pipe


class RecordingProducer:
    """Keeps the keys it is asked to send: for replays that need no broker."""

    def __init__(self, keys: list[bytes | None]) -> None:
        self.keys = keys

    def send(self, topic: str, key: bytes | None, value: bytes) -> RecordingProducer:
        self.keys.append(key)
        return self

    def add_errback(self, errback: object) -> None:
        pass

    def flush(self) -> None:
        pass


def test_progress_shows_the_share_of_a_file_read(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text(jsonl("m", 10))
    line_bytes = len(f.read_bytes()) // 10
    with open_input(f) as replay_input:
        taken = [next(replay_input.records) for _ in range(4)]
        assert [k for k, _ in taken] == [b"m0", b"m1", b"m2", b"m3"]
        assert replay_input.share_read() == pytest.approx(4 * line_bytes / (10 * line_bytes))
        list(replay_input.records)
        assert replay_input.share_read() == 1.0
    assert (
        progress_line("t", 1234, 2.0, 0.4)
        == "finsent produce: 1234 records sent to t (617/s), 40% of the file read"
    )
    assert progress_line("t", 999, 1.0, 0.999).endswith(", 99% of the file read")  # 100% only at the end
    assert progress_line("t", 0, 0.0, None) == "finsent produce: 0 records sent to t (0/s)"


def test_a_pipe_shows_no_share(fifo: Path) -> None:
    writer = threading.Thread(target=lambda: fifo.write_text(jsonl("p", 2)), daemon=True)
    writer.start()
    with open_input(fifo) as replay_input:
        assert replay_input.share_read() is None
        assert len(list(replay_input.records)) == 2
    writer.join(timeout=10)


def big_csv(path: Path, good_rows: int, tail: bytes) -> None:
    """A CSV whose first `good_rows` rows are fine, then `tail`: past the first read, so that only the
    replay, not the check before connecting, meets it."""
    rows = "".join(f"row {i} {'x' * 60},r{i}\n" for i in range(good_rows))
    path.write_bytes(b"text,id\n" + rows.encode() + tail)


def test_an_input_that_breaks_off_later_raises_while_streaming(tmp_path: Path) -> None:
    f = tmp_path / "late.csv"
    big_csv(f, 2000, b"bad \xff\xfe,z\n")
    replay_input = open_input(f)  # the first record is fine
    with replay_input, pytest.raises(InputError, match="not UTF-8 text"):
        list(replay_input.records)


def test_an_input_that_breaks_off_later_is_sent_up_to_there_then_exits_2(
    noida: Noida,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"produce-late-{unique}"
    create_topic(noida.kafka, topic, 1)
    f = tmp_path / "late.csv"
    big_csv(f, 2000, b"bad \xff\xfe,z\nafter,y\n")
    assert produce_cli(monkeypatch, noida.kafka, f, topic) == 2
    out, err = capsys.readouterr()
    sent = int(re.fullmatch(r"sent (\d+) records to \S+\n", out)[1])  # type: ignore[index]
    assert 0 < sent <= 2000
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"finsent produce: {f}: not UTF-8 text (") and "Traceback" not in err
    assert last.endswith(f"(stopped there, after {sent} records)")
    got = read_topic(noida.kafka, topic, expected=sent, settle_s=0.3)
    assert [r.key for r in got] == [f"r{i}".encode() for i in range(sent)]


def test_open_input_checks_the_first_record_only(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("text,id\nfirst,a\nsecond,b\nthird,c\n", encoding="utf-8")
    with open_input(f, source="x") as replay_input:
        assert [json.loads(v) for _, v in replay_input.records] == [
            {"source": "x", "text": t, "id": i} for t, i in (("first", "a"), ("second", "b"), ("third", "c"))
        ]
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with open_input(empty) as replay_input:
        assert list(replay_input.records) == []
