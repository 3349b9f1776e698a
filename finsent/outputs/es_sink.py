"""Bulk indexing that never loses a document: transient failures are retried with backoff until they
succeed or the worker stops; documents the server rejects for good are returned for dead-lettering."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, SerializationError, TransportError

from finsent.outputs.es_errors import error_object, error_type

log = logging.getLogger(__name__)

# A bulk request unanswered this long is logged once (as Kafka outputs unacknowledged are): a server that
# hangs without refusing showed only in the consumer lag until the request timed out (30 s by default).
BULK_STALL_WARNING_S = 10.0

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A whole bulk request refused with these is split in halves until the documents at fault are alone:
# real Elasticsearch answers 400 for a request holding one invalid action (an _id over 512 bytes), 413
# for a body over http.max_content_length.
SPLIT_STATUS = frozenset({400, 413})
# Statuses of a document that are the document's own fault: it would fail the same way on every retry.
DOCUMENT_FAULT_STATUS = frozenset({400, 409, 413})
# Errors reported per document that are about the index or the cluster (a write block, a key without
# privileges on a new daily index, auto-create restricted): held and retried like an outage, not
# dead-lettered, because the documents are fine.
INDEX_FAULT_TYPES = frozenset(
    {
        "cluster_block_exception",
        "index_closed_exception",
        "index_not_found_exception",
        "security_exception",
        "es_rejected_execution_exception",
        "circuit_breaking_exception",
        # the daily index could not be created (ES 8: the cluster is at cluster.max_shards_per_node);
        # a document's own faults come as parsing errors, never as this
        "validation_exception",
    }
)
# Index faults ES 7 (and managed services) report as illegal_argument_exception, which a document can also
# cause (an immense term): told apart by the reason.
INDEX_FAULT_REASON = re.compile(
    r"maximum (?:normal )?shards open|shards, but this cluster|no write index", re.IGNORECASE
)


class SinkStopped(Exception):
    """The worker is stopping while the sink still could not write: nothing is committed for the batch."""


@dataclass(frozen=True, slots=True)
class IndexAction:
    index: str
    doc_id: str
    source: dict[str, Any]

    @property
    def target(self) -> tuple[str, str]:
        """(index, id): what one document is. An id is unique within its index only (daily indices)."""
        return self.index, self.doc_id


@dataclass(frozen=True, slots=True)
class Rejection:
    index: str
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


def error_text(error: Any) -> str:
    return (
        f"{error.get('type', 'error')}: {error.get('reason', '')}" if isinstance(error, dict) else str(error)
    )


def is_request_fault_of_the_document(error: ApiError) -> bool:
    """Whether a one-document bulk request was refused for that document: too large (413), or failing
    the request's validation (an _id over 512 bytes). Any other 400 is about the request itself."""
    if error.meta.status == 413:
        return True
    return error_type(error) == "action_request_validation_exception"


def is_document_fault(status: int, error: Any) -> bool:
    """Whether a per-document bulk error will recur for this document whatever the server's state. A new
    day's index that cannot be created answers 400 for each document: taken for the documents' fault, the
    whole day was dead-lettered and committed instead of held until the cluster has room."""
    kind = error.get("type") if isinstance(error, dict) else None
    reason = str(error.get("reason", "")) if isinstance(error, dict) else ""
    if kind in INDEX_FAULT_TYPES:
        return False
    if kind == "illegal_argument_exception" and INDEX_FAULT_REASON.search(reason):
        return False  # (other types' reasons can quote the document's own values)
    return status in DOCUMENT_FAULT_STATUS


def is_refused_document(error: ApiError) -> bool:
    """Whether a one-document write (the index API: alert documents) was refused for that document, by
    the rule of bulk items, whose answer it is: a write block (403), a revoked key (401), a missing index
    (404) are the index's, waited out as the labeler's sink waits them out, not the document dropped."""
    status = error.meta.status
    return isinstance(status, int) and is_document_fault(status, error_object(error))


def bulk_results(body: Any, sent: int) -> list[dict[str, Any]]:
    """Each document's result in a `_bulk` answer, checked against the request: a 200 that is no answer to
    it (a proxy's page with the product header, a foreign body, items missing) raises SerializationError,
    so the batch is held and retried like an outage (the writes are idempotent) instead of crashing the
    worker; what such an answer took is unknown."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) != sent:
        got = f"{len(items)} items" if isinstance(items, list) else f"no items in {str(body)[:200]!r}"
        raise SerializationError(
            f"Elasticsearch's bulk answer is not one for the {sent} documents sent ({got})"
        )
    results: list[dict[str, Any]] = []
    for item in items:
        result = next(iter(item.values()), None) if isinstance(item, dict) else None
        if not isinstance(result, dict):
            raise SerializationError(
                f"Elasticsearch's bulk answer holds an item that is no result: {item!r:.200}"
            )
        results.append(result)
    return results


def result_status(result: dict[str, Any]) -> int:
    """A document result's status; 500 (retried) where it has none a server could mean."""
    status = result.get("status")
    return status if isinstance(status, int) else 500


class ElasticsearchSink:
    """Writes batches with `_bulk`; `available` says whether the last attempt reached the server."""

    def __init__(
        self,
        client: Elasticsearch,
        *,
        stop: threading.Event,
        backoff_max_s: float = 30.0,
        on_error: Callable[[], None] | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.request_timeout_s = request_timeout_s
        self.stop = stop
        self.backoff_max_s = backoff_max_s
        self.on_error = on_error
        self.available = True
        self._why_retry = ""
        self._finish_by: float | None = None
        self.stall_warning_s = BULK_STALL_WARNING_S

    def finish_by(self, deadline: float) -> None:
        """From now on, each request ends by `deadline` (time.monotonic()) and none starts after it: a
        stopping worker's shutdown budget is not overrun by a bulk request of the full
        `request_timeout_s` sent to a hanging server near its end (the pod's grace period was)."""
        self._finish_by = deadline

    def write(
        self, actions: Sequence[IndexAction], *, stop: threading.Event | None = None
    ) -> list[Rejection]:
        """Index every action; returns those rejected for good. Raises SinkStopped if stopped first (by
        `stop` when given, else the sink's own event)."""
        stop = stop if stop is not None else self.stop
        pending = {a.target: a for a in actions}  # the same id twice for one index: the later wins
        rejected: list[Rejection] = []
        attempt = 0
        said = ""  # the reason of the last "did not take" line: a new one is said at once
        started = time.monotonic()
        while pending:
            try:
                retry, failed = self._bulk_split(list(pending.values()))
                self.available = True
            except (TransportError, ApiError) as e:
                # Unreachable, overloaded, or refusing every request (401/403: a revoked or expired key):
                # consuming is held and the batch retried until the server takes it or the worker stops.
                self.available = False
                retry, failed = list(pending), []
                self._why_retry = f"{type(e).__name__}: {e}"[:300]
                self._note_failure(attempt, self._why_retry)
            rejected.extend(failed)
            pending = {target: pending[target] for target in retry}
            if pending:
                # documents refused one by one (a write block at disk flood stage, 429s per item) go on
                # for as long as an outage: said when the reason changes and every tenth retry, as one
                if attempt == 0 or (self.available and (attempt % 10 == 0 or self._why_retry != said)):
                    said = self._why_retry
                    log.warning(
                        "Elasticsearch did not take %d documents (%s); retrying",
                        len(pending),
                        self._why_retry,
                    )
                if stop.wait(backoff(attempt, self.backoff_max_s)):
                    raise SinkStopped("stopping while Elasticsearch still had unwritten documents")
                attempt += 1
        if attempt:  # the all-clear of the lines above, for whoever is watching the log
            log.info(
                "Elasticsearch took the batch after %d retr%s (%.0f s); consuming goes on",
                attempt,
                "y" if attempt == 1 else "ies",
                time.monotonic() - started,
            )
        return rejected

    def _bulk_split(self, actions: Sequence[IndexAction]) -> tuple[list[tuple[str, str]], list[Rejection]]:
        """One bulk request; if the server refuses it as a whole for its content (SPLIT_STATUS), the two
        halves separately, down to single documents, which are then rejections of their own."""
        try:
            return self._bulk(actions)
        except ApiError as e:
            status = e.meta.status
            if status not in SPLIT_STATUS:
                raise
            if len(actions) == 1:
                if not is_request_fault_of_the_document(e):
                    raise  # about the request, not this document (a proxy, a header): held and retried
                reason = f"Elasticsearch rejected the document's request ({status}) {e}"[:1000]
                return [], [Rejection(actions[0].index, actions[0].doc_id, reason)]
            log.warning("Elasticsearch refused a bulk of %d (%s); splitting it", len(actions), status)
            mid = len(actions) // 2
            retry_a, failed_a = self._bulk_split(actions[:mid])
            retry_b, failed_b = self._bulk_split(actions[mid:])
            return retry_a + retry_b, failed_a + failed_b

    def _bulk(self, actions: Sequence[IndexAction]) -> tuple[list[tuple[str, str]], list[Rejection]]:
        client = self.client
        timeout: float | None = None  # the request's own, when a stop cut it short
        if self._finish_by is not None:
            left = self._finish_by - time.monotonic()
            if left <= 0:
                raise SinkStopped("the stop's time for Elasticsearch is over")
            timeout = min(left, self.request_timeout_s)
            client = client.options(request_timeout=timeout)
        watchdog = threading.Timer(
            self.stall_warning_s, self._stalled, (len(actions), time.monotonic(), timeout)
        )
        watchdog.daemon = True
        watchdog.start()
        try:
            # Typed as a list of dicts, but the client's NDJSON serialiser sends bytes unchanged.
            resp = client.bulk(operations=bulk_body(actions))  # type: ignore[arg-type]
        finally:
            watchdog.cancel()
        results = bulk_results(resp.body, len(actions))
        if not resp.body.get("errors"):
            return [], []
        retry: list[tuple[str, str]] = []
        failed: list[Rejection] = []
        for action, result in zip(actions, results, strict=True):
            status = result_status(result)
            if status < 300:
                continue
            err = result.get("error") or {}
            if not is_document_fault(status, err):
                retry.append(action.target)
                self._why_retry = f"{status} {error_text(err)}"[:300]
                continue
            failed.append(
                Rejection(
                    action.index,
                    action.doc_id,
                    f"Elasticsearch rejected the document ({status}) {error_text(err)}"[:1000],
                )
            )
        if self.on_error and (retry or failed):
            self.on_error()
        return retry, failed

    def _stalled(self, documents: int, sent: float, stop_timeout: float | None) -> None:
        """The watchdog's line, from its own thread while the request is still pending. `stop_timeout`:
        the request's timeout as a stop cut it (no retry follows it)."""
        waited = time.monotonic() - sent
        if stop_timeout is not None:
            log.warning(
                "Elasticsearch has not answered a bulk request of %d documents after %.0f s; the stop ends "
                "it %.0f s after it was sent, and its batch stays uncommitted",
                documents,
                waited,
                stop_timeout,
            )
            return
        log.warning(
            "Elasticsearch has not answered a bulk request of %d documents after %.0f s; still waiting, "
            "until the request timeout (%.0f s) fails it and it is retried; consuming is held meanwhile",
            documents,
            waited,
            self.request_timeout_s,
        )

    def _note_failure(self, attempt: int, what: str) -> None:
        if self.on_error:
            self.on_error()
        if attempt == 0 or attempt % 10 == 0:
            log.warning("Elasticsearch unavailable (%s); consuming is held until it is back", what)
