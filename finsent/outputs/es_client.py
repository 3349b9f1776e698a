"""Build an Elasticsearch client from settings (API key or basic auth, TLS with a CA bundle)."""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.serializer import OrjsonSerializer

from finsent.settings import ElasticsearchSettings


def make_client(settings: ElasticsearchSettings) -> Elasticsearch:
    """One client per process; secrets are unwrapped here and nowhere else."""
    if not settings.url:
        raise ValueError("elasticsearch.url is empty: set FINSENT_ELASTICSEARCH__URL or disable the output")
    kw: dict[str, Any] = {
        "request_timeout": settings.request_timeout_s,
        "verify_certs": settings.verify_certs,
        # Responses (a bulk response has one item per document) parsed with orjson: bench/outputs.py.
        "serializers": {"application/json": OrjsonSerializer()},
        # Every caller retries with its own backoff and deadline (the sink, the index set-up, the alert
        # documents): the client's own 3 immediate retries made a request in flight at a stop outlast
        # the stop's deadline by a whole request timeout, and hammered a server answering 429/503.
        "max_retries": 0,
    }
    if settings.api_key is not None:
        kw["api_key"] = settings.api_key.get_secret_value()
    elif settings.username:
        password = settings.password.get_secret_value() if settings.password else ""
        kw["basic_auth"] = (settings.username, password)
    if settings.ca_certs is not None:
        kw["ca_certs"] = str(settings.ca_certs)
    return Elasticsearch(settings.url, **kw)
