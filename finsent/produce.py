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
from typing import BinaryIO, ParamSpec, TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaError

from finsent.background import Background

PROGRESS_EVERY_S = 5.0
"""How often a long replay reports its progress: often enough to show it is alive, rarely enough to read."""
STOP_FLUSH_S = 10.0
"""How long a replay stopped by SIGINT/SIGTERM waits for the acks of what it sent before it reports."""

T = TypeVar("T")
P = ParamSpec("P")


class ReplayInterrupted(Exception):
    """Raised by `ReplayStop.request` inside a wait that would not end by itself (a silent pipe)."""


class ReplayStop:
    """A stop asked for from outside a replay: `finsent produce`'s SIGINT/SIGTERM handler calls `request`
    in the main thread. Between records the replay checks `requested`; while it blocks (opening and
    reading a pipe whose writer is silent, waiting out `--rate`), `request` raises ReplayInterrupted there
    instead, so that the replay ends at once. Nothing else is ever interrupted: a send or an ack's
    callback is not broken off half-way."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._blocking = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """Ask for the stop (the first call counts); raises ReplayInterrupted inside `blocking_call`."""
        if self.signum is not None:
            return
        self.signum = signum
        if self._blocking:
            self._blocking = False
            raise ReplayInterrupted

    def blocking_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)`, broken off by ReplayInterrupted when a stop is, or gets, requested."""
        self._blocking = True
        try:
            if self.signum is not None:
                raise ReplayInterrupted
            return fn(*args, **kwargs)
        finally:
            self._blocking = False


Record = tuple[bytes | None, bytes]
"""(key, value) of one Kafka record."""

Read = tuple[Record, bool]
"""A record, and whether it is a message with neither `id` nor `published_at`: its id is derived from the
Kafka timestamp, which each run gives anew, so a second run of the file indexes it a second time."""


class InputError(ValueError):
    """The input cannot be read (on): not UTF-8, not a readable CSV, a read error. The message names the
    file, so the command can print it as it is."""


class ReplayInput:
    """A JSONL or CSV file opened for one streamed read, its first record already read (see `open_input`).
    Backfill files can be gigabytes and pipes can be read only once: `records` reads the file as it is
    iterated, one record at a time, so memory stays bounded whatever the file's size. `undated` counts the
    records taken from it with neither `id` nor `published_at` (`finsent produce` warns of them once, after
    its count: a re-run of the file would duplicate them)."""

    def __init__(self, path: Path, file: io.BufferedReader, source: str | None) -> None:
        self.path = path
        self._file = file
        self._regular = stat.S_ISREG(os.fstat(file.fileno()).st_mode)
        self.undated = 0
        records = _checked(_records(file, path, source), path)
        first = next(records, None)  # a bad header or first record raises here, before anything connects
        self.records: Iterator[Record] = iter(()) if first is None else self._counted(chain([first], records))

    def _counted(self, reads: Iterator[Read]) -> Iterator[Record]:
        """The records, counting the undated ones as they are taken (not as read ahead at the open)."""
        for record, undated in reads:
            self.undated += undated
            yield record

    def undated_warning(self) -> str | None:
        """The line that says how many records a re-run would duplicate; None when there are none."""
        if not self.undated:
            return None
        return (
            f"finsent produce: warning: {self.undated} records had neither `id` nor `published_at`: their "
            "ids come from this run's Kafka timestamps, so replaying this file again indexes them a second "
            "time (give backfill files an `id` or `published_at` to make them re-runnable)"
        )

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


def _records(f: BinaryIO, path: Path, source: str | None) -> Iterator[Read]:
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
            yield _jsonl_record(line)


def _checked(records: Iterator[Read], path: Path) -> Iterator[Read]:
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


def _jsonl_record(line: bytes) -> Read:
    """The line as it is, keyed by its `id` where it has one Kafka can carry."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deep; the pipeline dead-letters it
        return (None, line), False
    if not isinstance(obj, dict):
        return (None, line), False
    return (_key_of(obj.get("id")), line), obj.get("id") is None and obj.get("published_at") is None


def _key_of(msg_id: object) -> bytes | None:
    """A string id as the record's key; none for an id that is no UTF-8 (an unpaired surrogate escape such
    as "\\ud800" ended the replay and lost what it had sent): the pipeline dead-letters that line."""
    if not isinstance(msg_id, str):
        return None
    try:
        return msg_id.encode()
    except UnicodeEncodeError:
        return None


def _csv_records(f: io.TextIOWrapper, path: Path, source: str) -> Iterator[Read]:
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
        undated = "id" not in msg and "published_at" not in msg
        yield (key, json.dumps(msg, ensure_ascii=False).encode("utf-8")), undated


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
    """What a replay did: records acknowledged, records that failed, the first failure's reason, the
    input error that ended it early, if any, and, for a replay stopped by a signal, that signal and the
    records whose acks had not come when it stopped waiting (`STOP_FLUSH_S`)."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None
    input_error: str | None = None
    stopped_by: int | None = None
    unconfirmed: int = 0

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
    stop: ReplayStop | None = None,
    stop_flush_s: float = STOP_FLUSH_S,
) -> Replayed:
    """Send records at `rate` per second (0 = as fast as possible) and wait for the acks. Records are read
    one at a time, never past `limit` (a pipe's writer is not waited on for one that would not be sent).
    flush() does not raise for records that failed (broker down past delivery_timeout_ms, record too
    large): each send's errback counts them, so that a lost record is never reported as sent. An
    InputError while reading ends the replay: what was sent is flushed and counted, the error kept in the
    result. `progress(sent so far, seconds)` is called every `progress_every_s` during a long replay,
    from a thread of its own: a pipe whose writer is silent, or a final flush waiting on the broker,
    still shows the replay alive. A `stop` requested (SIGINT/SIGTERM) ends it too, a silent pipe or the
    final flush included: the acks of what was sent are waited for up to `stop_flush_s` more, those
    still missing then counted as `unconfirmed` (the caller closes the producer without waiting on
    them: `finsent.outputs.kafka_outputs.close_producer`)."""
    started = time.monotonic()
    result = Replayed()
    stop = stop if stop is not None else ReplayStop()
    answers = _Answers(result)
    count = _Count()
    ticker = _Ticker(count, started, progress, progress_every_s) if progress is not None else None
    try:
        pending = iter(records)
        try:
            while (limit is None or count.attempted < limit) and not stop.requested:
                record = _next_record(pending, result, stop)
                if record is None:
                    break
                if rate > 0:
                    stop.blocking_call(_wait_until, started + count.attempted / rate)
                if stop.requested:
                    break  # read but not sent
                count.attempted += 1
                answers.send(producer, topic, record)
        except ReplayInterrupted:
            pass
        flush = Background(producer.flush, "finsent-produce-flush")
        flushed = flush.wait(unless=lambda: stop.requested) or flush.wait(stop_flush_s)
    finally:
        if ticker is not None:
            ticker.stop()
    result.stopped_by = stop.signum
    if flushed:
        flush.result()
        result.sent = count.attempted - result.failed
    else:  # stopped, and the broker did not answer for all of them in time
        acked = answers.freeze()
        result.sent = acked
        result.unconfirmed = count.attempted - acked - result.failed
    return result


class _Answers:
    """The broker's answer to each record sent, from the producer's I/O thread: failures counted into the
    result, acks counted here. `freeze` takes the counts as they are, and later answers are ignored
    (those of records dropped by a forced close)."""

    def __init__(self, result: Replayed) -> None:
        self._result = result
        self._acked = 0
        self._frozen = False
        self._lock = threading.Lock()

    def send(self, producer: KafkaProducer, topic: str, record: Record) -> None:
        try:
            future = producer.send(topic, key=record[0], value=record[1])
        except KafkaError as e:
            self.fail(e)
            return
        add_callback = getattr(future, "add_callback", None)  # a stand-in producer may offer errbacks only
        if add_callback is not None:
            add_callback(self.ack)
        future.add_errback(self.fail)

    def ack(self, _metadata: object) -> None:
        with self._lock:
            if not self._frozen:
                self._acked += 1

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if not self._frozen:
                self._result.fail(error)

    def freeze(self) -> int:
        """The records acknowledged so far; failures stay as counted in the result."""
        with self._lock:
            self._frozen = True
            return self._acked


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


def _next_record(records: Iterator[Record], result: Replayed, stop: ReplayStop) -> Record | None:
    """The next record; None at the end of the input or when it cannot be read on (noted in `result`).
    Raises ReplayInterrupted when a stop comes while it waits for a pipe's writer."""
    try:
        return stop.blocking_call(next, records, None)
    except InputError as e:
        result.input_error = str(e)
        return None


def _wait_until(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
