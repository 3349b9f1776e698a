"""`finsent produce`: replay a JSONL or CSV file into a topic at a steady rate (demos, backfills, tests)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError

PROGRESS_EVERY_S = 5.0
"""How often a long replay reports its progress: often enough to show it is alive, rarely enough to read."""


Record = tuple[bytes | None, bytes]
"""(key, value) of one Kafka record."""


def load_records(path: Path, *, source: str | None = None, limit: int | None = None) -> list[Record]:
    """The file's records (the first `limit`), read once, before anything connects: the total for the
    progress display is known up front, a bad file (missing, a folder, a CSV without a `text` column or
    with undecodable text) raises ValueError before a record is sent, and a pipe (`/dev/stdin`, `<(...)`),
    which cannot be read twice, works. The records are held in memory, about the size of what is sent."""
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: not a file (a JSONL or CSV file is expected)")
    try:
        return list(islice(read_records(path, source=source), limit))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from e


def read_records(path: Path, *, source: str | None = None) -> Iterator[Record]:
    """(key, value) per record, streamed. JSONL lines are sent as they are (bad lines too: the pipeline
    dead-letters them); CSV rows become messages from their `text` column plus any contract columns
    present."""
    if path.suffix.lower() == ".csv":
        yield from _csv_records(path, source or f"csv:{path.stem}")
        return
    with path.open("rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            yield _key_of(line), line


def _key_of(line: bytes) -> bytes | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return str(obj["id"]).encode()
    return None


def _csv_records(path: Path, source: str) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            found = ", ".join(reader.fieldnames or ()) or "none: the file is empty"
            raise ValueError(f"{path}: a CSV file needs a `text` column (columns: {found})")
        for row in reader:
            msg: dict[str, object] = {"source": row.get("source") or source, "text": row["text"]}
            for name in ("id", "published_at", "url", "lang", "author", "title"):
                if row.get(name):
                    msg[name] = row[name]
            if row.get("tickers"):
                msg["tickers"] = [t for t in row["tickers"].replace(";", ",").split(",") if t.strip()]
            key = str(msg["id"]).encode() if "id" in msg else None
            yield key, json.dumps(msg, ensure_ascii=False).encode("utf-8")


@dataclass
class Replayed:
    """What a replay did: records acknowledged, records that failed, and the first failure's reason."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None

    def fail(self, error: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"


def replay(
    producer: KafkaProducer,
    topic: str,
    records: Iterable[Record],
    *,
    rate: float = 0.0,
    limit: int | None = None,
    progress: Callable[[int, float], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> Replayed:
    """Send records at `rate` per second (0 = as fast as possible) and wait for the acks. flush() does not
    raise for records that failed (broker down past delivery_timeout_ms, record too large): each send's
    errback counts them, so that a lost record is never reported as sent. `progress(sent so far, seconds)`
    is called every `progress_every_s` during a long replay."""
    started = time.monotonic()
    next_report = started + progress_every_s
    result = Replayed()
    attempted = 0
    for key, value in records:
        if limit is not None and attempted >= limit:
            break
        if progress is not None and time.monotonic() >= next_report:
            progress(attempted, time.monotonic() - started)
            next_report = time.monotonic() + progress_every_s
        if rate > 0:
            due = started + attempted / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        attempted += 1
        try:
            producer.send(topic, key=key, value=value).add_errback(result.fail)
        except KafkaError as e:
            result.fail(e)
    producer.flush()
    result.sent = attempted - result.failed
    return result
