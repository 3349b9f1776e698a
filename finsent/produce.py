"""`finsent produce`: replay a JSONL or CSV file into a topic at a steady rate (demos, backfills, tests)."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kafka import KafkaProducer
from kafka.errors import KafkaError

PROGRESS_EVERY_S = 5.0
"""How often a long replay reports its progress: often enough to show it is alive, rarely enough to read."""


Record = tuple[bytes | None, bytes]
"""(key, value) of one Kafka record."""


class InputError(ValueError):
    """The input cannot be read (on): not UTF-8, not a readable CSV, a read error. The message names the
    file, so the command can print it as it is."""


class ReplayInput:
    """A JSONL or CSV file opened for one streamed read, its first record already read (see `open_input`).
    Backfill files can be gigabytes and pipes can be read only once: `records` reads the file as it is
    iterated, one record at a time, so memory stays bounded whatever the file's size."""

    def __init__(self, path: Path, file: io.BufferedReader, source: str | None) -> None:
        self.path = path
        self._file = file
        self._regular = stat.S_ISREG(os.fstat(file.fileno()).st_mode)
        records = _checked(_records(file, path, source), path)
        first = next(records, None)  # a bad header or first record raises here, before anything connects
        self.records: Iterator[Record] = iter(()) if first is None else chain([first], records)

    def share_read(self) -> float | None:
        """How much of a regular file has been read so far (0..1): with no record total while streaming,
        this is what shows how far a replay is. None for a pipe, whose size is unknown."""
        if not self._regular:
            return None
        size = os.fstat(self._file.fileno()).st_size  # asked again: the file may still be growing
        return 1.0 if size <= 0 else min(1.0, self._file.tell() / size)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ReplayInput:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_input(path: Path, *, source: str | None = None) -> ReplayInput:
    """`path` opened and its first record read, before anything connects: a missing file, a folder, a
    CSV without a `text` column or a first record that is not UTF-8 raise ValueError (InputError for what
    is read) at once, not after the broker's 30 s timeout. The rest is read during the replay."""
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: not a file (a JSONL or CSV file is expected)")
    try:
        file = path.open("rb")  # a FIFO blocks here until its writer opens it
    except OSError as e:
        raise InputError(_cannot_read(path, e)) from e
    try:
        return ReplayInput(path, file, source)
    except BaseException:
        file.close()
        raise


def _records(f: BinaryIO, path: Path, source: str | None) -> Iterator[Record]:
    """JSONL lines are sent as they are (bad lines too: the pipeline dead-letters them); CSV rows become
    messages from their `text` column plus any contract columns present."""
    if path.suffix.lower() == ".csv":
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        try:
            yield from _csv_records(text, path, source or f"csv:{path.stem}")
        finally:
            if not f.closed:
                text.detach()  # else the wrapper, once collected, closes `f` while its owner still reads it
        return
    for line in f:
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield _key_of(line), line


def _checked(records: Iterator[Record], path: Path) -> Iterator[Record]:
    """`records`, with the ways reading a file fails turned into one InputError that names the file."""
    try:
        yield from records
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e
    except OSError as e:
        raise InputError(_cannot_read(path, e)) from e


def _cannot_read(path: Path, e: OSError) -> str:
    return f"{path}: cannot read it ({e.strerror or e})"


def _key_of(line: bytes) -> bytes | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deep; the pipeline dead-letters it
        return None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return str(obj["id"]).encode()
    return None


def _csv_records(f: io.TextIOWrapper, path: Path, source: str) -> Iterator[Record]:
    reader = csv.DictReader(f)
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        found = ", ".join(reader.fieldnames or ()) or "none: the file is empty"
        raise InputError(f"{path}: a CSV file needs a `text` column (columns: {found})")
    for row in reader:
        msg: dict[str, object] = {"source": row.get("source") or source, "text": row["text"]}
        for name in ("id", "published_at", "url", "lang", "author", "title"):
            if row.get(name):
                msg[name] = row[name]
        if row.get("tickers"):
            msg["tickers"] = [t for t in row["tickers"].replace(";", ",").split(",") if t.strip()]
        key = str(msg["id"]).encode() if "id" in msg else None
        yield key, json.dumps(msg, ensure_ascii=False).encode("utf-8")


def progress_line(topic: str, sent: int, elapsed_s: float, share_read: float | None) -> str:
    """One progress line. A streamed input has no record total: for a regular file, the share of it read
    so far stands in for one (floored, so 100% means all of it); a pipe shows records and rate only."""
    rate = sent / elapsed_s if elapsed_s > 0 else 0.0
    line = f"finsent produce: {sent} records sent to {topic} ({rate:.0f}/s)"
    if share_read is None:
        return line
    return f"{line}, {int(share_read * 100)}% of the file read"


@dataclass
class Replayed:
    """What a replay did: records acknowledged, records that failed, the first failure's reason, and the
    input error that ended it early, if any."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None
    input_error: str | None = None

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
    """Send records at `rate` per second (0 = as fast as possible) and wait for the acks. Records are read
    one at a time, never past `limit` (a pipe's writer is not waited on for one that would not be sent).
    flush() does not raise for records that failed (broker down past delivery_timeout_ms, record too
    large): each send's errback counts them, so that a lost record is never reported as sent. An
    InputError while reading ends the replay: what was sent is flushed and counted, the error kept in the
    result. `progress(sent so far, seconds)` is called every `progress_every_s` during a long replay,
    from a thread of its own: a pipe whose writer is silent, or a final flush waiting on the broker,
    still shows the replay alive."""
    started = time.monotonic()
    result = Replayed()
    count = _Count()
    ticker = _Ticker(count, started, progress, progress_every_s) if progress is not None else None
    try:
        pending = iter(records)
        while limit is None or count.attempted < limit:
            record = _next_record(pending, result)
            if record is None:
                break
            if rate > 0:
                _wait_until(started + count.attempted / rate)
            count.attempted += 1
            try:
                producer.send(topic, key=record[0], value=record[1]).add_errback(result.fail)
            except KafkaError as e:
                result.fail(e)
        producer.flush()
    finally:
        if ticker is not None:
            ticker.stop()
    result.sent = count.attempted - result.failed
    return result


@dataclass
class _Count:
    """Records handed to the producer so far (written by the replay, read by its ticker)."""

    attempted: int = 0


class _Ticker:
    """Calls `progress(attempted, seconds)` every `every_s` on a daemon thread until stopped."""

    def __init__(
        self, count: _Count, started: float, progress: Callable[[int, float], None], every_s: float
    ) -> None:
        self._count, self._started, self._progress, self._every_s = count, started, progress, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finsent-produce-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._every_s):
            self._progress(self._count.attempted, time.monotonic() - self._started)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _next_record(records: Iterator[Record], result: Replayed) -> Record | None:
    """The next record; None at the end of the input or when it cannot be read on (noted in `result`)."""
    try:
        return next(records, None)
    except InputError as e:
        result.input_error = str(e)
        return None


def _wait_until(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
