"""Labeled `text,label` CSVs, as used for training and `finsent evaluate` (no torch needed)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LabeledSet:
    """Texts and their raw label strings as read from a `text,label` CSV; `lines` holds the file line
    each row starts on (for messages), `skipped` the rows with an empty text or label."""

    path: Path
    texts: list[str]
    labels: list[str]
    skipped: int = 0
    lines: list[int] = field(default_factory=list)
    open_quote_line: int | None = None
    """Where a `"` opened a field that runs to the end of the file (never closed), if one did."""

    def line_of(self, index: int) -> int | None:
        """The file line row `index` starts on, when known."""
        return self.lines[index] if index < len(self.lines) else None


FIELD_LIMIT = 1 << 26
"""The longest field read (64 Mi characters; the csv module's default stops at 128 Ki, a long article)."""


def read_csv_text(path: Path) -> str:
    """The whole file as text: UTF-8, a leading byte-order mark (Excel's "CSV UTF-8") dropped. A byte that
    is not UTF-8 raises ValueError naming the file and its line (not a position in some buffer)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        byte = raw[e.start : e.start + 1].hex()
        raise ValueError(
            f"{path}: line {line}: byte 0x{byte} is not UTF-8; save the file as UTF-8 (CSV UTF-8)"
        ) from None


def find_columns(header: Sequence[str], names: Sequence[str]) -> dict[str, int]:
    """{name: its column's index} for each of `names` the header has, matched ignoring case and surrounding
    spaces (spreadsheets write `Text,Label`); a name it lacks is left out. Two columns matching one name
    raise ValueError naming both: taking either would be a guess at which one holds the data."""
    wanted = {name.casefold(): name for name in names}
    found: dict[str, int] = {}
    for index, column in enumerate(header):
        name = wanted.get(column.strip().casefold())
        if name is None:
            continue
        if name in found:
            first = found[name]
            raise ValueError(
                f"the header has two `{name}` columns: `{header[first].strip()}` (column {first + 1}) and "
                f"`{column.strip()}` (column {index + 1}); rename or drop one"
            )
        found[name] = index
    return found


def read_labeled_csv(path: Path, *, limit: int | None = None) -> LabeledSet:
    """Read a UTF-8 CSV (a byte-order mark is allowed) with `text` and `label` columns (`find_columns`: any
    case) and any line endings. Rows with an empty text or label are skipped and counted in `skipped`. A
    file that cannot be read as such raises ValueError naming the file (and the line where it applies)."""
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    skipped = 0
    open_quote: int | None = None
    reader = csv.reader(io.StringIO(read_csv_text(path), newline=""))
    field_limit = csv.field_size_limit(FIELD_LIMIT)  # a long article is a text, not an error
    try:
        header = next(reader, [])
        text_at, label_at = _text_label_columns(path, header)
        start = reader.line_num + 1
        for row in reader:
            if not row:  # a blank line is no row (as csv.DictReader reads it)
                start = reader.line_num + 1
                continue
            text = row[text_at].strip() if text_at < len(row) else ""
            label = row[label_at].strip() if label_at < len(row) else ""
            if not text or not label:
                skipped += 1
                # short of fields, a field with line breaks, and the file's end: a quote never closed
                if len(row) < len(header) and any("\n" in value for value in row):
                    open_quote = start
            else:
                texts.append(text)
                labels.append(label)
                lines.append(start)
                open_quote = None
            start = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: not a readable CSV row ({e})") from None
    finally:
        csv.field_size_limit(field_limit)
    if limit is not None:
        texts, labels, lines = texts[:limit], labels[:limit], lines[:limit]
    return LabeledSet(
        path=path, texts=texts, labels=labels, skipped=skipped, lines=lines, open_quote_line=open_quote
    )


def _text_label_columns(path: Path, header: Sequence[str]) -> tuple[int, int]:
    """Where the `text` and `label` columns are (`find_columns`); ValueError naming `path` otherwise."""
    try:
        columns = find_columns(header, ("text", "label"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if "text" not in columns or "label" not in columns:
        raise ValueError(f"{path}: expected a header with `text` and `label` columns")
    return columns["text"], columns["label"]


def skipped_note(data: LabeledSet) -> str:
    """`N skipped: an empty text or label` (and where a quote never closed), for messages."""
    note = f"{data.skipped} skipped: an empty text or label"
    if data.open_quote_line is not None:
        note += f"; the quote on line {data.open_quote_line} never closes: the rest of the file is one field"
    return note


def sample_rows(data: LabeledSet, n: int | None, seed: int = 0) -> LabeledSet:
    """A seeded random sample of `n` rows, in file order (all of them when `n` is None or not smaller).
    Labeled files are often sorted by label: their first rows would hold a few classes only, and a
    macro-F1 over the rest would be meaningless."""
    if n is None or n >= len(data.texts):
        return data
    import random

    keep = sorted(random.Random(seed).sample(range(len(data.texts)), max(n, 0)))
    return LabeledSet(
        path=data.path,
        texts=[data.texts[i] for i in keep],
        labels=[data.labels[i] for i in keep],
        skipped=data.skipped,
        lines=[data.lines[i] for i in keep if i < len(data.lines)],
        open_quote_line=data.open_quote_line,
    )
