"""`finsent produce`: JSONL and CSV files replayed into a topic (at a rate), read back unchanged."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from finsent.cli import main
from finsent.produce import load_records, read_records, replay
from tests.pipeline_helpers import read_topic
from tests.servers import Noida, create_topic


def test_read_jsonl_keeps_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text('{"id": "a", "source": "s", "text": "x"}\n\nnot json\n{"source": "s", "text": "y"}\r\n')
    assert list(read_records(f)) == [
        (b"a", b'{"id": "a", "source": "s", "text": "x"}'),
        (None, b"not json"),
        (None, b'{"source": "s", "text": "y"}'),
    ]


def test_read_csv_text_column(tmp_path: Path, shared_data: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text('text,label,tickers\n"Fed holds, again",2,"AAPL;MSFT"\nplain,0,\n', encoding="utf-8")
    rows = [json.loads(v) for _, v in read_records(f)]
    assert rows == [
        {"source": "csv:s", "text": "Fed holds, again", "tickers": ["AAPL", "MSFT"]},
        {"source": "csv:s", "text": "plain"},
    ]
    first = next(read_records(shared_data / "tfns-sentiment" / "train.csv", source="tfns"))
    assert json.loads(first[1])["source"] == "tfns"
    bad = tmp_path / "b.csv"
    bad.write_text("title\nx\n")
    with pytest.raises(ValueError, match="text"):
        list(read_records(bad))


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
    assert replay(producer, topic, read_records(f), rate=50, limit=10).sent == 10
    assert time.monotonic() - started >= 0.15
    producer.close()
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", broker)
    assert main(["produce", str(f), "--topic", topic]) == 0
    assert "sent 20 records" in capsys.readouterr().out
    got = read_topic(broker, topic, expected=30, settle_s=0.3)
    assert len(got) == 30
    assert sorted({r.key for r in got}) == sorted({f"m{i}".encode() for i in range(20)})


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
    result = replay(producer, topic, read_records(f))
    producer.close()
    assert (result.sent, result.failed) == (2, 1) and "MessageSizeTooLarge" in str(result.first_error)
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", broker)
    assert main(["produce", str(f), "--topic", topic]) == 1
    out = capsys.readouterr()
    assert "sent 2 records" in out.out and "1 records were NOT written" in out.err


def test_a_pipe_is_read_once_and_replayed(
    noida: Noida,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pipe (`producer | finsent produce /dev/stdin`) can be read only once: counting the records for the
    progress display and sending them come from that one read."""
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
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", noida.kafka)
    assert main(["produce", str(fifo), "--topic", topic]) == 0
    writer.join(timeout=10)
    assert "sent 7 records" in capsys.readouterr().out
    got = read_topic(noida.kafka, topic, expected=7, settle_s=0.3)
    assert sorted(r.key for r in got) == sorted(f"p{i}".encode() for i in range(7))


def test_load_records_takes_the_first_limit_records(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("text,id\nfirst,a\nsecond,b\nthird,c\n", encoding="utf-8")
    assert [k for k, _ in load_records(f, limit=2)] == [b"a", b"b"]
    assert [json.loads(v)["text"] for _, v in load_records(f, source="x")] == ["first", "second", "third"]
