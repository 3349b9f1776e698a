"""Reading JSONL/CSV files dropped by other systems from a byte offset (line splitting is pure)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.sources.checkpoint import FileOffset
from ingest.sources.normalize import InvalidItem

log = logging.getLogger(__name__)

# A last line without a newline is taken as complete once the file has not changed for this long.
PARTIAL_LINE_GRACE_S = 60.0

# How much of a file's beginning its checkpoint keeps a digest of (less while less was read): enough for
# a CSV header and the first records, and one small read per file and fetch.
HEAD_BYTES = 1024


@dataclass(frozen=True)
class Line:
    data: bytes
    start: int  # byte offset where the line starts
    end: int  # byte offset just after its newline


def split_lines(buffer: bytes, base_offset: int, *, final: bool = False) -> tuple[list[Line], int]:
    """Complete lines in `buffer` (read from `base_offset`) and the offset after the last one; with
    `final`, a trailing line without newline counts as complete."""
    lines: list[Line] = []
    pos = 0
    while True:
        nl = buffer.find(b"\n", pos)
        if nl < 0:
            break
        lines.append(Line(buffer[pos:nl].rstrip(b"\r"), base_offset + pos, base_offset + nl + 1))
        pos = nl + 1
    if final and pos < len(buffer):
        lines.append(Line(buffer[pos:].rstrip(b"\r"), base_offset + pos, base_offset + len(buffer)))
        pos = len(buffer)
    return lines, base_offset + pos


def list_files(path: Path, pattern: str) -> list[Path]:
    """The file itself, or the folder's files matching `pattern` (hidden and temp files skipped), oldest
    first so that drops are read in the order they arrived."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    root = path.resolve()
    files = [
        p
        for p in path.glob(pattern)
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.endswith((".tmp", ".part"))
        and _inside(p, root)
    ]
    return sorted(files, key=lambda p: (_mtime(p), p.name))


def _inside(path: Path, root: Path) -> bool:
    """Whether the file, links followed, is in the folder: a symlink dropped there must not make finsent
    read and publish any file it can read (/etc/passwd, another service's data)."""
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed since the listing: its read fails (and is counted) later
        return 0.0


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    return "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"


def start_offset(path: Path, previous: FileOffset | None) -> tuple[int, os.stat_result]:
    """Where to resume: the checkpoint's offset unless the file was replaced, truncated or rewritten."""
    st = path.stat()
    if previous is None:
        return 0, st
    if previous.inode and previous.inode != st.st_ino:
        log.info("%s was replaced (inode changed); reading it from the start", path)
        return 0, st
    if st.st_size < previous.offset:
        log.info("%s shrank below the checkpoint (truncated); reading it from the start", path)
        return 0, st
    if _rewritten(path, previous):
        log.info("%s was rewritten in place (its first bytes changed); reading it from the start", path)
        return 0, st
    return previous.offset, st


def file_offset(path: Path, offset: int, st: os.stat_result) -> FileOffset:
    """The checkpoint of `path` read up to `offset`, with a digest of its first bytes: a file truncated
    and written again past the offset between two reads (`exporter > file`, logrotate's copytruncate)
    keeps its inode and does not shrink, and only its changed beginning tells the next read to start
    over. Never raises: a file that cannot be read again is checkpointed without digest."""
    head_bytes = min(HEAD_BYTES, offset)
    try:
        head = _head_digest(path, head_bytes)
    except OSError:
        head_bytes, head = 0, ""
    return FileOffset(offset, st.st_ino, st.st_size, head_bytes, head)


def _rewritten(path: Path, previous: FileOffset) -> bool:
    """Whether the first bytes the checkpoint has a digest of changed (a checkpoint without one, from an
    older version, cannot tell: the file is taken as unchanged, as then)."""
    if previous.head_bytes <= 0:
        return False
    return _head_digest(path, previous.head_bytes) != previous.head


def _head_digest(path: Path, size: int) -> str:
    """Digest of the first `size` bytes of the file ("" for none)."""
    if size <= 0:
        return ""
    with path.open("rb") as f:
        return hashlib.blake2b(f.read(size), digest_size=16).hexdigest()


def read_lines(
    path: Path, offset: int, budget: int, now: float | None = None, *, may_skip: bool = True
) -> tuple[list[Line], int]:
    """Complete lines from `offset`, reading at most `budget` bytes; returns the lines and the next offset.
    A single line longer than the budget is returned truncated so the reader moves past it, unless
    `may_skip` is False (the budget is only what a fetch had left): then nothing is read."""
    now = time.time() if now is None else now
    with path.open("rb") as f:
        f.seek(offset)
        buffer = f.read(budget)
        st = os.fstat(f.fileno())
    at_end = offset + len(buffer) >= st.st_size
    settled = now - st.st_mtime >= PARTIAL_LINE_GRACE_S
    lines, next_offset = split_lines(buffer, offset, final=at_end and settled)
    if not lines and len(buffer) == budget:
        if not may_skip:
            return [], offset
        # One line longer than the budget: skip to its end so the file does not stall.
        end = _find_newline(path, offset + budget)
        return [Line(buffer, offset, end)], end
    return lines, next_offset


def _find_newline(path: Path, start: int) -> int:
    with path.open("rb") as f:
        f.seek(start)
        pos = start
        while chunk := f.read(1 << 20):
            nl = chunk.find(b"\n")
            if nl >= 0:
                return pos + nl + 1
            pos += len(chunk)
        return pos


def csv_header(path: Path, delimiter: str) -> tuple[list[str], int]:
    """The header row of a CSV file and the offset after it (0, [] if not yet complete)."""
    with path.open("rb") as f:
        first = f.readline(1 << 20)
    if not first.endswith(b"\n"):
        return [], 0
    try:
        row = _first_row(first.decode("utf-8-sig", errors="replace"), delimiter)
    except InvalidItem as e:
        log.warning(
            "%s: unusable CSV header (%s); the file is skipped until its header is fixed", path, e.detail
        )
        return [], 0
    return [c.strip() for c in row], len(first)


def parse_jsonl(line: bytes) -> Any:
    """A JSON value from a line; raises ValueError (bad UTF-8 or JSON) or RecursionError (nested too deep)."""
    return json.loads(line.decode("utf-8"))


def parse_csv_row(line: bytes, header: list[str], delimiter: str) -> dict[str, str]:
    """A CSV row as {column: value}; raises ValueError for a row with more cells than the header, and
    InvalidItem("oversized") for a cell over the csv module's limit."""
    cells = _first_row(line.decode("utf-8"), delimiter)
    if len(cells) > len(header):
        raise ValueError(f"{len(cells)} cells but the header has {len(header)} columns")
    return dict(zip(header, cells, strict=False))


def iter_nonblank(lines: list[Line]) -> Iterator[Line]:
    return (ln for ln in lines if ln.data.strip())


def allow_csv_cells_up_to(chars: int) -> None:
    """Raise csv's cell limit (process-wide, 128 Ki characters by default) to at least `chars`, never
    lower it. Called once by the sources service at start with its line bound (`max_item_bytes` x 4), so
    that a long filing's body in one cell is read, not refused; importing this module changes nothing."""
    if csv.field_size_limit() < chars:
        csv.field_size_limit(chars)


def _first_row(text: str, delimiter: str) -> list[str]:
    """The first CSV row of `text`, read within the csv module's cell limit (128 Ki characters unless the
    application set another): the limit is process-wide, so it is left as it is rather than raised for
    every module and thread, and a longer cell is an oversized item, dead-lettered with its reason."""
    try:
        return next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    except csv.Error as e:
        if "field larger than field limit" not in str(e):
            raise
        raise InvalidItem("oversized", f"a CSV cell is over {csv.field_size_limit()} characters") from None
