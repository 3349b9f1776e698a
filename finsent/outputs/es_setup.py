"""Idempotent start-up setup of time-based indices: lifecycle policy, index template with explicit mappings,
and a read alias. Reusable by every part of finsent that writes to Elasticsearch (events, alerts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import ApiError, Elasticsearch

from finsent.outputs.es_documents import EVENTS_MAPPINGS, events_alias
from finsent.settings import ElasticsearchSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSetup:
    """Everything needed to create one family of indices behind a read alias."""

    template_name: str
    index_patterns: tuple[str, ...]
    alias: str
    mappings: dict[str, Any]
    number_of_shards: int = 1
    number_of_replicas: int = 1
    lifecycle_policy: str | None = None
    delete_after_days: int | None = None
    bootstrap_index: str | None = None
    extra_settings: dict[str, Any] = field(default_factory=dict)
    # Index names end in the day they hold (-YYYY.MM.DD): the lifecycle counts from that day, not from
    # the index's creation, so a backfilled day is deleted retention days after the day itself.
    dated_names: bool = False


def ensure_index_setup(client: Elasticsearch, setup: IndexSetup) -> bool:
    """Create or update policy, template and (optionally) a first index; safe to run at every start.

    Returns whether the lifecycle policy is in force. A server without ILM (e.g. noida-db) is detected and
    logged, never fatal: the template is then installed without the lifecycle setting."""
    lifecycle = False
    if setup.lifecycle_policy and setup.delete_after_days:
        lifecycle = _put_policy(client, setup.lifecycle_policy, setup.delete_after_days)
    settings = template_settings(setup, lifecycle=lifecycle)
    client.indices.put_index_template(
        name=setup.template_name,
        index_patterns=list(setup.index_patterns),
        template={"settings": settings, "mappings": setup.mappings, "aliases": {setup.alias: {}}},
        priority=200,
        meta={"managed_by": "finsent"},
    )
    if setup.bootstrap_index and not client.indices.exists(index=setup.bootstrap_index):
        try:
            client.indices.create(index=setup.bootstrap_index)
        except ApiError as e:
            if "resource_already_exists" not in str(e):
                raise
    log.info(
        "index template %s ready (patterns %s, alias %s, lifecycle %s)",
        setup.template_name,
        ",".join(setup.index_patterns),
        setup.alias,
        setup.lifecycle_policy
        if lifecycle
        else "not supported by this server"
        if setup.lifecycle_policy
        else "off",
    )
    return lifecycle


def template_settings(setup: IndexSetup, *, lifecycle: bool) -> dict[str, Any]:
    """The index settings of the template; lifecycle ones only where the server has lifecycle management."""
    settings: dict[str, Any] = {
        "number_of_shards": setup.number_of_shards,
        "number_of_replicas": setup.number_of_replicas,
        **setup.extra_settings,
    }
    if lifecycle:
        settings["index.lifecycle.name"] = setup.lifecycle_policy
        if setup.dated_names:
            settings["index.lifecycle.parse_origination_date"] = True
    return settings


def _put_policy(client: Elasticsearch, name: str, delete_after_days: int) -> bool:
    policy = {
        "phases": {
            "hot": {"min_age": "0ms", "actions": {"set_priority": {"priority": 100}}},
            "delete": {"min_age": f"{delete_after_days}d", "actions": {"delete": {}}},
        }
    }
    try:
        client.ilm.put_lifecycle(name=name, policy=policy)
    except ApiError as e:
        if e.meta.status in (400, 404, 405, 501):
            log.warning(
                "Elasticsearch server has no index lifecycle management (%s); skipping policy %s",
                e.meta.status,
                name,
            )
            return False
        raise
    return True


def events_setup(settings: ElasticsearchSettings) -> IndexSetup:
    """The labeled-events family: `<prefix>-events-YYYY.MM.DD` behind alias `<prefix>-events`."""
    prefix = settings.index_prefix
    return IndexSetup(
        template_name=f"{prefix}-events",
        index_patterns=(f"{prefix}-events-*",),
        alias=events_alias(prefix),
        mappings=EVENTS_MAPPINGS,
        number_of_shards=settings.number_of_shards,
        number_of_replicas=settings.number_of_replicas,
        lifecycle_policy=f"{prefix}-events" if settings.lifecycle_enabled else None,
        delete_after_days=settings.retention_days,
        dated_names=True,
    )
