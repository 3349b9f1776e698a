"""Bytes for detector snapshots kept in Kafka: versioned, zlib-compressed JSON (8 bytes per open event id)."""

from __future__ import annotations

import json
import zlib
from typing import Any

MAGIC = b"FSA1"


class SnapshotDecodeError(ValueError):
    """A stored snapshot that cannot be read (corrupt, or written by an unknown version)."""


def encode_state(state: dict[str, Any]) -> bytes:
    return MAGIC + zlib.compress(json.dumps(state, separators=(",", ":"), allow_nan=False).encode(), 6)


def decode_state(data: bytes) -> dict[str, Any]:
    if not data.startswith(MAGIC):
        raise SnapshotDecodeError("not a finsent alert-state record (bad magic)")
    try:
        value = json.loads(zlib.decompress(data[len(MAGIC) :]).decode())
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotDecodeError(f"corrupt alert-state record: {exc}") from None
    if not isinstance(value, dict):
        raise SnapshotDecodeError("alert-state record is not an object")
    return value
