"""Bulk indexing that never loses a document: transient failures are retried with backoff until they
succeed or the worker stops; documents the server rejects for good are returned for dead-lettering."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SinkStopped(Exception):
    """The worker is stopping while the sink still could not write: nothing is committed for the batch."""


@dataclass(frozen=True, slots=True)
class IndexAction:
    index: str
    doc_id: str
    source: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection:
    doc_id: str
    reason: str


def backoff(attempt: int, cap_s: float) -> float:
    """0.2 s, 0.4 s, 0.8 s ... capped."""
    return float(min(cap_s, 0.2 * 2 ** min(attempt, 16)))


def bulk_body(actions: Sequence[IndexAction]) -> bytes:
    """The NDJSON body of one `_bulk` request, serialised here with orjson (the client's stdlib serialiser
    took about 9 x the CPU per document: bench/outputs.py); the client sends bytes as they are."""
    lines: list[bytes] = []
    for a in actions:
        lines.append(orjson.dumps({"index": {"_index": a.index, "_id": a.doc_id}}))
        lines.append(orjson.dumps(a.source, option=orjson.OPT_SERIALIZE_NUMPY))
    lines.append(b"")
    return b"\n".join(lines)


class ElasticsearchSink:
    """Writes batches with `_bulk`; `available` says whether the last attempt reached the server."""

    def __init__(
        self,
        client: Elasticsearch,
        *,
        stop: threading.Event,
        backoff_max_s: float = 30.0,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.stop = stop
        self.backoff_max_s = backoff_max_s
        self.on_error = on_error
        self.available = True

    def write(self, actions: Sequence[IndexAction]) -> list[Rejection]:
        """Index every action; returns those rejected for good. Raises SinkStopped if stopped first."""
        pending = {a.doc_id: a for a in actions}
        rejected: list[Rejection] = []
        attempt = 0
        while pending:
            try:
                retry, failed = self._bulk(list(pending.values()))
                self.available = True
            except (TransportError, ApiError) as e:
                status = getattr(getattr(e, "meta", None), "status", None)
                if isinstance(e, ApiError) and status not in RETRYABLE_STATUS:
                    raise
                self.available = False
                retry, failed = list(pending), []
                self._note_failure(attempt, f"{type(e).__name__}: {e}")
            rejected.extend(failed)
            pending = {doc_id: pending[doc_id] for doc_id in retry}
            if pending:
                if attempt == 0 or self.available:
                    log.warning("Elasticsearch did not take %d documents; retrying", len(pending))
                self._sleep(backoff(attempt, self.backoff_max_s))
                attempt += 1
        return rejected

    def _bulk(self, actions: Sequence[IndexAction]) -> tuple[list[str], list[Rejection]]:
        # Typed as a list of dicts, but the client's NDJSON serialiser sends bytes unchanged.
        resp = self.client.bulk(operations=bulk_body(actions))  # type: ignore[arg-type]
        if not resp.get("errors"):
            return [], []
        retry: list[str] = []
        failed: list[Rejection] = []
        for action, item in zip(actions, resp["items"], strict=True):
            result = next(iter(item.values()))
            status = int(result.get("status", 500))
            if status < 300:
                continue
            if status in RETRYABLE_STATUS:
                retry.append(action.doc_id)
                continue
            err = result.get("error") or {}
            reason = (
                f"{err.get('type', 'error')}: {err.get('reason', '')}" if isinstance(err, dict) else str(err)
            )
            failed.append(
                Rejection(
                    doc_id=action.doc_id,
                    reason=f"Elasticsearch rejected the document ({status}) {reason}"[:1000],
                )
            )
        if self.on_error and (retry or failed):
            self.on_error()
        return retry, failed

    def _note_failure(self, attempt: int, what: str) -> None:
        if self.on_error:
            self.on_error()
        if attempt == 0 or attempt % 10 == 0:
            log.warning("Elasticsearch unavailable (%s); consuming is held until it is back", what)

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise SinkStopped("stopping while Elasticsearch still had unwritten documents")

    def reachable(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False
