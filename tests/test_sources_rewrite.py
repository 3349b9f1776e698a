"""A tailed file truncated and written again in place (`exporter > latest.jsonl`, logrotate's
copytruncate) keeps its inode and may have grown past the checkpoint before the next read: its changed
beginning must make the next read start over, not resume mid-line."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ingest.sources.checkpoint import Checkpoint, FileOffset, StateStore
from ingest.sources.config import SourcesSettings, parse_sources
from ingest.sources.publisher import StreamPublisher
from ingest.sources.service import SourcesService
from ingest.sources.tailing import HEAD_BYTES, file_offset, start_offset


def jsonl(*ids: str) -> bytes:
    return b"".join(
        json.dumps({"id": i, "text": f"headline {i} about markets"}).encode() + b"\n" for i in ids
    )


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Truncate and write the file through the same inode, as a shell's `>` does."""
    inode = path.stat().st_ino
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(data)
    assert path.stat().st_ino == inode


def settle(path: Path) -> None:
    """Date the file an hour back, so that reads do not wait for a writer still at work."""
    old = time.time() - 3600
    os.utime(path, (old, old))


def test_only_a_changed_beginning_makes_the_read_start_over(tmp_path: Path) -> None:
    f = tmp_path / "latest.jsonl"
    f.write_bytes(jsonl(*(f"a{i}" for i in range(40))))  # longer than the bytes the digest covers
    read = file_offset(f, f.stat().st_size, f.stat())
    assert read.head_bytes == HEAD_BYTES < read.offset
    with f.open("ab") as out:
        out.write(jsonl("a40"))
    assert start_offset(f, read)[0] == read.offset  # appended to: resumed

    rewrite_in_place(f, jsonl(*(f"new{i}" for i in range(40))))
    assert f.stat().st_size > read.offset  # neither replaced nor shrunk: only the beginning tells
    assert start_offset(f, read)[0] == 0


def test_checkpoints_keep_the_digest_and_older_ones_resume_as_before(tmp_path: Path) -> None:
    f = tmp_path / "latest.jsonl"
    f.write_bytes(jsonl("a1", "a2"))
    store = StateStore(tmp_path / "state")
    store.save_checkpoint("drops", Checkpoint(files={str(f): file_offset(f, 20, f.stat())}))
    saved = store.load_checkpoint("drops").files[str(f)]
    assert saved == file_offset(f, 20, f.stat()) and saved.head_bytes == 20 and saved.head

    # A checkpoint written before the digest existed: read, and the file resumed from its offset.
    older = Checkpoint.from_json({"files": {str(f): {"offset": 20, "inode": f.stat().st_ino, "size": 40}}})
    assert older.files[str(f)] == FileOffset(20, f.stat().st_ino, 40)
    assert start_offset(f, older.files[str(f)])[0] == 20


def make_service(state: Path, drop: Path, out: io.StringIO) -> tuple[SourcesService, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = SourcesSettings(state_dir=state, dedup_horizon_hours=24 * 3650)
    entries = [{"name": "drops", "kind": "files", "path": str(drop)}]
    return SourcesService(parse_sources(entries, env={}), settings, StreamPublisher(out), registry), registry


def published(out: io.StringIO) -> list[Any]:
    return [json.loads(x)["id"] for x in out.getvalue().splitlines()]


def test_the_service_reads_a_file_rewritten_in_place_from_the_start_across_restarts(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    latest = drop / "latest.jsonl"
    latest.write_bytes(jsonl("a1", "a2"))
    settle(latest)
    out = io.StringIO()
    service, _ = make_service(tmp_path / "state", drop, out)
    assert service.run_all_once()[0].published == 2
    assert service.run_all_once()[0].published == 0  # nothing new: the checkpoint stays
    service.stop()

    rewrite_in_place(latest, jsonl("new1", "new2", "new3"))
    settle(latest)
    out2 = io.StringIO()
    service2, _ = make_service(tmp_path / "state", drop, out2)
    (report,) = service2.run_all_once()
    assert report.invalid == 0  # no fragment of a line read from the old offset
    assert published(out2) == ["drops:new1", "drops:new2", "drops:new3"]
    service2.stop()
