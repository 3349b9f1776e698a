"""Bytes for detector snapshots kept in Kafka: versioned, zlib-compressed JSON (8 bytes per open event id)."""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson

MAGIC = b"FSA1"


class SnapshotDecodeError(ValueError):
    """A stored snapshot that cannot be read (corrupt, or written by an unknown version)."""


def encode_state(state: dict[str, Any]) -> bytes:
    return MAGIC + zlib.compress(json.dumps(state, separators=(",", ":"), allow_nan=False).encode(), 6)


def decode_state(data: bytes) -> dict[str, Any]:
    if not data.startswith(MAGIC):
        raise SnapshotDecodeError("not a finsent alert-state record (bad magic)")
    try:
        # orjson, not json: it refuses what encode_state never writes and what would break the worker
        # later (NaN and infinities, which make every later save fail; unpaired surrogates; nesting
        # deeper than 1,024) instead of reading it, and raises only JSONDecodeError (json raised a plain
        # ValueError for an integer of over 4,300 digits and RecursionError for deep nesting).
        value = orjson.loads(zlib.decompress(data[len(MAGIC) :]))
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise SnapshotDecodeError(f"corrupt alert-state record: {str(exc)[:300]}") from None
    if not isinstance(value, dict):
        raise SnapshotDecodeError("alert-state record is not an object")
    return value
