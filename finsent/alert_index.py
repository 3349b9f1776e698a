"""Alerts into Elasticsearch (`<prefix>-alerts`, for Grafana annotations); ids are deterministic so a
firing alert's document is overwritten by its resolved version and replays do not duplicate."""

from __future__ import annotations

import logging
from typing import Any

from elasticsearch import Elasticsearch

from alerts.model import Alert

log = logging.getLogger(__name__)

ALERTS_MAPPING: dict[str, Any] = {
    "properties": {
        "fingerprint": {"type": "keyword"},
        "rule": {"type": "keyword"},
        "key_type": {"type": "keyword"},
        "key": {"type": "keyword"},
        "status": {"type": "keyword"},
        "severity": {"type": "keyword"},
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


class AlertIndex:
    def __init__(self, client: Elasticsearch, prefix: str) -> None:
        self.client = client
        self.index = f"{prefix}-alerts"
        self._ready = False

    def ensure(self) -> None:
        if self._ready:
            return
        if not self.client.indices.exists(index=self.index):
            try:
                self.client.indices.create(index=self.index, mappings=ALERTS_MAPPING)
            except Exception as exc:  # a concurrent worker may have created it
                if not self.client.indices.exists(index=self.index):
                    raise exc
        self._ready = True

    def write(self, alert: Alert) -> None:
        self.ensure()
        self.client.index(index=self.index, id=alert.alert_id, document=alert.es_document())
