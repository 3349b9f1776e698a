"""Alerts into Elasticsearch (`<prefix>-alerts`, for Grafana annotations); ids are deterministic so a
firing alert's document is overwritten by its resolved version and replays do not duplicate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from elasticsearch import (
    ApiError,
    AuthorizationException,
    ConflictError,
    Elasticsearch,
    NotFoundError,
    TransportError,
)

from alerts.model import Alert
from finsent.outputs.es_errors import error_summary, error_type

log = logging.getLogger(__name__)

ALERTS_MAPPING: dict[str, Any] = {
    "properties": {
        "fingerprint": {"type": "keyword"},
        "rule": {"type": "keyword"},
        "key_type": {"type": "keyword"},
        "key": {"type": "keyword"},
        "status": {"type": "keyword"},
        "severity": {"type": "keyword"},
        "escalated_from": {"type": "keyword"},
        "starts_at": {"type": "date"},
        "ends_at": {"type": "date"},
        "window_start": {"type": "date"},
        "window_end": {"type": "date"},
        "summary": {"type": "text"},
        "p_value": {"type": "double"},
        "negative_share": {"type": "float"},
        "baseline_share": {"type": "float"},
        "count": {"type": "integer"},
        "negative_count": {"type": "float"},
        "dashboard_url": {"type": "keyword", "index": False},
    }
}


ALERTS_TEMPLATE_PRIORITY = 0
"""The alerts index template's priority: the lowest, so that a deployment's own template over the index
name (replicas, shards, lifecycle) keeps applying; see AlertIndex._put_template."""

TEMPLATE_RETRY_S = 60.0
"""After a 5xx, 429 or 408 on the alerts index template, the next alert written this long after tries it
again: once the index exists nothing else would, and the template is what keeps its mapping should it be
deleted and made again."""

STARTUP_TIMEOUT_S = 10.0
"""How long the start-up attempt to create the index may take: it is best effort, and the worker's start
waits for it."""


def transition_version(alert: Alert) -> int:
    """Milliseconds of the window that made the transition: a firing alert's window end, a resolved
    one's end, which is a later window's."""
    moment = alert.ends_at if alert.status == "resolved" and alert.ends_at is not None else alert.window_end
    return round(moment * 1000)


def _may_exist(error: Exception) -> bool:
    """Whether a create, after a HEAD that was not allowed, leaves the index possibly there: it was, or
    these credentials may not create indices (403), only write documents."""
    return isinstance(error, ApiError) and (
        error.meta.status == 403 or error_type(error) == "resource_already_exists_exception"
    )


def _server_trouble(error: ApiError) -> bool:
    """A refusal for the server's sake, which may pass: 5xx, 429 (busy), 408."""
    status = error.meta.status
    return status >= 500 or status in (408, 429)


class AlertIndexUnavailable(Exception):
    """Creating the alerts index failed (a template of another mapping over its name, Elasticsearch away):
    no document's fault, so the alert worker keeps its documents queued and tries again, as for an outage,
    instead of dropping each as refused for its own content."""


class AlertIndex:
    """The concrete index `<prefix>-alerts`, created (empty) by `prepare()` when the worker starts, so
    that the dashboards' annotation query and users' searches find it before the first alert instead of
    failing with index_not_found. Elasticsearch may be down then: the first write tries again."""

    def __init__(
        self, client: Elasticsearch, prefix: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.index = f"{prefix}-alerts"
        self.clock = clock
        self._ready = False
        self._template_retry_at: float | None = None  # when a template failed for the server's sake

    def prepare(self) -> bool:
        """Create the index now, once and briefly: alerts must not wait for Elasticsearch, so a failure is
        logged and left to the first write. Returns whether it went through (credentials that may not look
        at the index go ahead without knowing)."""
        try:
            self._create(self.client.options(request_timeout=STARTUP_TIMEOUT_S, max_retries=0))
        except (ApiError, TransportError) as e:
            log.warning(
                "Elasticsearch index %s not created at start-up (%s); the first alert will create it",
                self.index,
                e,
            )
            return False
        self._ready = True
        return True

    def ensure(self) -> None:
        if not self._ready:
            self._create(self.client)
            self._ready = True

    def _create(self, client: Elasticsearch) -> None:
        """Idempotent, and safe with several workers starting at once: whichever creates it, it exists.
        An index made by an older version gets the fields added since (put mapping only adds)."""
        self._put_template(client)
        there = self._exists(client)
        if there:
            self._add_fields(client)
            return
        try:
            client.indices.create(index=self.index, mappings=ALERTS_MAPPING)
        except Exception as e:
            if there is None and _may_exist(e):
                return  # the document write says whether these credentials can use the index
            if there is None or not client.indices.exists(index=self.index):  # a concurrent worker's?
                raise

    def _put_template(self, client: Elasticsearch) -> bool:
        """An index template of the index's own name, so that the index, deleted while the worker runs and
        made again by the next write (`action.auto_create_index` on, the default), gets the alert mapping
        instead of a dynamic one (`key`, `status` as text: annotation filters on them stop matching).
        Priority 0, below any template of the deployment's own over the name (only the highest applies):
        one of priority 0 too makes Elasticsearch refuse this one. A template of the same name that
        finsent did not make is left as it is. Best effort: a refusal (no `manage_index_templates`) is
        a warning; one for the server's sake (5xx, 429, 408) is tried again by a later write
        (`TEMPLATE_RETRY_S`)."""
        self._template_retry_at = None
        try:
            if self._foreign_template(client):
                return False
            client.indices.put_index_template(
                name=self.index,
                index_patterns=[self.index],
                template={"mappings": ALERTS_MAPPING},
                priority=ALERTS_TEMPLATE_PRIORITY,
                meta={"managed_by": "finsent"},
            )
        except ApiError as e:  # a server in trouble fails the index's creation next, where it counts
            again = _server_trouble(e)
            if again:
                self._template_retry_at = self.clock() + TEMPLATE_RETRY_S
            log.warning(
                "alerts index %s: index template not installed (%s)%s; if the index is deleted, the next "
                "alert re-creates it with dynamic mappings",
                self.index,
                error_summary(e),
                "; a later alert tries again" if again else "",
            )
            return False
        return True

    def _template_again(self) -> None:
        """The template once more, after it failed for the server's sake, when its time has come. Never
        the write's failure: the document is what counts, and a later write tries again."""
        due = self._template_retry_at
        if due is None or self.clock() < due:
            return
        try:
            installed = self._put_template(self.client)
        except TransportError as e:  # the server away again: a later write tries again
            self._template_retry_at = self.clock() + TEMPLATE_RETRY_S
            log.warning("alerts index %s: index template still not installed (%s)", self.index, e)
            return
        if installed:
            log.info("alerts index %s: index template installed", self.index)

    def _foreign_template(self, client: Elasticsearch) -> bool:
        """Whether a template of the index's name exists that finsent did not make (logged once)."""
        try:
            found = client.indices.get_index_template(name=self.index)["index_templates"]
        except NotFoundError:
            return False
        meta = (found[0]["index_template"].get("_meta") or {}) if found else {}
        if not found or meta.get("managed_by") == "finsent":
            return False
        log.info(
            "alerts index %s: an index template of that name not made by finsent is left as it is", self.index
        )
        return True

    def _exists(self, client: Elasticsearch) -> bool | None:
        """Whether the index exists; None where the server will not say: a key that may write documents
        but lacks view_index_metadata gets 403 to HEAD, and taken as a failure every alert document was
        dropped unwritten, though the write itself would have gone through."""
        try:
            return bool(client.indices.exists(index=self.index))
        except AuthorizationException:
            log.info(
                "alerts index %s: not allowed to check that it exists; writing to it all the same", self.index
            )
            return None

    def _add_fields(self, client: Elasticsearch) -> None:
        """Map the fields an existing index lacks before a document brings them (dynamic mapping would
        make a keyword a text field). Best effort: a field mapped otherwise already stays as it is."""
        try:
            client.indices.put_mapping(index=self.index, properties=ALERTS_MAPPING["properties"])
        except ApiError as e:
            log.warning("alerts index %s: could not add the newer fields to its mapping: %s", self.index, e)

    def write(self, alert: Alert) -> None:
        """Write the alert's latest transition, unless a later one is there already. Two workers can write
        the same alert during a rebalance (the old owner's queued "firing" after the new owner's
        "resolved", while Elasticsearch was down), so the document's version is the transition's time:
        Elasticsearch keeps the later one, and an older write is dropped as superseded."""
        try:
            self.ensure()
        except ApiError as e:  # about the index, not the document (connection errors pass as they are)
            raise AlertIndexUnavailable(f"creating the alerts index {self.index} failed: {e}") from e
        self._template_again()
        try:
            self.client.index(
                index=self.index,
                id=alert.alert_id,
                document=alert.es_document(),
                version=transition_version(alert),
                version_type="external_gte",  # the same transition written again (a replay) is fine
            )
        except ConflictError:
            log.info("alert %s (%s): a later transition is indexed already", alert.alert_id, alert.status)
        except ApiError as e:
            if error_type(e) == "index_not_found_exception":
                self._ready = False  # deleted (auto-create off): the retry creates it again, with its mapping
            raise
