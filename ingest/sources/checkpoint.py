"""Per-source checkpoints (last seen id/time, validators, cursor, file offsets) and their persistence.

The checkpoint only moves after the broker acknowledged every message of a fetch (publish, then
checkpoint), so a crash between the two re-reads items, which the dedup index then drops. Files are
written atomically (temp file, fsync, rename) so that a crash never leaves half a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.sources.dedup import DedupIndex
from ingest.sources.timeparse import format_time, parse_time

log = logging.getLogger(__name__)

# A published_at further ahead of the local clock than this is a bad date, not clock skew.
FUTURE_SKEW_S = 86_400.0


@dataclass(frozen=True)
class FileOffset:
    """How far a file was read: byte offset of the next unread line, plus identity to detect rotation, and
    a digest of the file's first bytes to detect a rewrite in place (none in checkpoints of older
    versions: `head_bytes` 0)."""

    offset: int = 0
    inode: int = 0
    size: int = 0
    head_bytes: int = 0  # how many bytes from the start `head` covers (at most `offset`)
    head: str = ""  # their digest, hex

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileOffset:
        return cls(
            offset=int(data.get("offset", 0)),
            inode=int(data.get("inode", 0)),
            size=int(data.get("size", 0)),
            head_bytes=int(data.get("head_bytes", 0)),
            head=str(data.get("head") or ""),
        )


@dataclass(frozen=True)
class Checkpoint:
    etag: str | None = None
    last_modified: str | None = None
    last_id: str | None = None
    last_published_at: str | None = None
    cursor: str | None = None
    files: dict[str, FileOffset] = field(default_factory=dict)
    updated_at: str | None = None
    # A later page failed in the last run: the next one pages on past pages already published, and asks
    # without validators, or the pages after the first would never be fetched.
    paging_incomplete: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        files_raw = data.get("files") or {}
        files = {str(p): FileOffset.from_json(f) for p, f in files_raw.items() if isinstance(f, dict)}

        def opt(name: str) -> str | None:
            v = data.get(name)
            return None if v is None else str(v)

        return cls(
            etag=opt("etag"),
            last_modified=opt("last_modified"),
            last_id=opt("last_id"),
            last_published_at=opt("last_published_at"),
            cursor=opt("cursor"),
            files=files,
            updated_at=opt("updated_at"),
            paging_incomplete=data.get("paging_incomplete") is True,
        )


def advance(
    checkpoint: Checkpoint, published: Iterable[Mapping[str, Any]], now: float, **changes: Any
) -> Checkpoint:
    """The checkpoint after `published` went out: newest published_at, last id, plus `changes`."""
    newest = parse_time(checkpoint.last_published_at)
    last_id = checkpoint.last_id
    for msg in published:
        last_id = str(msg.get("id") or last_id)
        when = parse_time(msg.get("published_at"))
        if when is None or when.timestamp() > now + FUTURE_SKEW_S:
            continue  # a date in the future would make since_param skip every item until then
        if newest is None or when > newest:
            newest = when
    return replace(
        checkpoint,
        last_id=last_id,
        last_published_at=format_time(newest) if newest else None,
        updated_at=format_time(datetime.fromtimestamp(now, tz=UTC)),
        **changes,
    )


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """Checkpoints (`<state_dir>/checkpoints/<source>.json`) and the dedup index (`dedup.json`).

    A read-only store (for `finsent sources check`) loads what is there and never writes."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.state_dir = state_dir
        self.readonly = readonly
        if not readonly:
            (state_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    def _checkpoint_path(self, source: str) -> Path:
        return self.state_dir / "checkpoints" / f"{source}.json"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            if self.readonly:
                log.error("state file %s is unreadable (%s); ignoring it", path, e)
                return None
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("state file %s is unreadable (%s); moved to %s and starting afresh", path, e, aside)
            path.replace(aside)
            return None
        return data if isinstance(data, dict) else None

    def load_checkpoint(self, source: str) -> Checkpoint:
        data = self._read(self._checkpoint_path(source))
        return Checkpoint.from_json(data) if data else Checkpoint()

    def save_checkpoint(self, source: str, checkpoint: Checkpoint) -> None:
        if self.readonly:
            return
        atomic_write_json(self._checkpoint_path(source), checkpoint.to_json())

    def load_dedup(self, horizon_s: float) -> DedupIndex:
        data = self._read(self.state_dir / "dedup.json")
        return DedupIndex.from_json(data, horizon_s) if data else DedupIndex(horizon_s=horizon_s)

    def save_dedup(self, index: DedupIndex) -> None:
        if self.readonly:
            return
        atomic_write_json(self.state_dir / "dedup.json", index.to_json())
