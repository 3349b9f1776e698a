"""Idempotent start-up setup of time-based indices: lifecycle policy, index template with explicit mappings,
and a read alias. Reusable by every part of finsent that writes to Elasticsearch (events, alerts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from elasticsearch import ApiError, Elasticsearch

from finsent.outputs.es_documents import EVENTS_MAPPINGS, events_alias, events_index
from finsent.outputs.es_errors import error_reason, error_summary, error_type
from finsent.outputs.es_retention import CLEANUP_INTERVAL_S
from finsent.settings import ElasticsearchSettings

log = logging.getLogger(__name__)

LIFECYCLE_UNAVAILABLE_STATUS = frozenset({404, 405, 410, 501})
"""Answers to `PUT _ilm/policy/<name>` that can only mean the server has no lifecycle API: 405 is real
Elasticsearch's answer for a path it routes under other methods only, 410 (`api_not_available_exception`)
its answer for an API switched off (serverless), 404 and 501 those of servers and proxies that do not route
`_ilm`; none of them can mean that the policy is invalid."""

NO_ROUTE_REASONS = ("no handler found for uri", "incorrect http method for uri")
"""How a server says, in a 400, that no handler took the request: real Elasticsearch answers a path it has
no handler for with 400 and a flat `{"error": "no handler found for uri [...] and method [...]"}` (its
RestController; plain text before 6.3), and noida-db answers `_ilm` the same way."""


TEMPLATE_PRIORITY = 200

RETRIABLE_CLIENT_STATUS = frozenset({408, 409, 429})
"""4xx answers that waiting can fix: a request timeout, a concurrent change (workers starting together),
too many requests. Any other 4xx to the setup is a refusal that every retry would meet again."""


def refused_for_good(error: ApiError) -> bool:
    """Whether a setup request's error is a refusal (4xx but not RETRIABLE_CLIENT_STATUS): retrying it
    kept a labeler unready for ever, one warning every ten tries, and its stop said 'unavailable'."""
    status = error.meta.status
    return isinstance(status, int) and 400 <= status < 500 and status not in RETRIABLE_CLIENT_STATUS


class IndexSetupError(Exception):
    """Elasticsearch refused part of the index setup for a reason that waiting does not fix (an invalid
    lifecycle policy): raised instead of carrying on without it, which would keep every index forever."""


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
    # Created (through the template, so with the alias) when the alias has no index yet: see
    # `_ensure_alias_index`.
    bootstrap_index: str | None = None
    extra_settings: dict[str, Any] = field(default_factory=dict)
    # Index names end in the day they hold (-YYYY.MM.DD): the lifecycle counts from that day, not from
    # the index's creation, so a backfilled day is deleted retention days after the day itself.
    dated_names: bool = False


def ensure_index_setup(client: Elasticsearch, setup: IndexSetup) -> bool:
    """Create or update policy, template and (optionally) a first index; safe to run at every start, by
    several workers at once.

    Returns whether the lifecycle policy is in force. A server without ILM (e.g. noida-db) is detected and
    logged, never fatal: the template is then installed without the lifecycle setting. A policy the server
    refuses raises IndexSetupError before anything else is installed."""
    lifecycle = False
    if setup.lifecycle_policy and setup.delete_after_days:
        lifecycle = _put_policy(client, setup)
    settings = template_settings(setup, lifecycle=lifecycle)
    try:
        client.indices.put_index_template(
            name=setup.template_name,
            index_patterns=list(setup.index_patterns),
            template={"settings": settings, "mappings": setup.mappings, "aliases": {setup.alias: {}}},
            priority=TEMPLATE_PRIORITY,
            meta={"managed_by": "finsent"},
        )
    except ApiError as e:
        if refused_for_good(e):
            raise IndexSetupError(_refused_template_message(setup, e)) from e
        raise
    _ensure_alias_index(client, setup)
    _add_new_fields(client, setup)
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


def _ensure_alias_index(client: Elasticsearch, setup: IndexSetup) -> None:
    """Give the alias an index before the first document: an alias exists only on an index, and dashboards
    and queries on a missing one fail with index_not_found.

    Only when the alias has none yet, so restarts on quiet days do not leave an empty index (and its
    shards) each. Workers starting together may all get here: `resource_already_exists` is success when
    the index has the alias (another worker created it through the template); an index that existed
    without it (made by hand or by another tool before the template) is given the alias, with a warning:
    its documents were invisible on the alias until the next day's index."""
    if setup.bootstrap_index is None or _alias_exists(client, setup):
        return
    try:
        client.indices.create(index=setup.bootstrap_index)
        return
    except ApiError as e:
        if error_type(e) != "resource_already_exists_exception":
            if refused_for_good(e):
                raise IndexSetupError(
                    f"Elasticsearch refused to create index {setup.bootstrap_index}: {error_summary(e)}"
                ) from e
            raise
    if _alias_exists(client, setup, setup.bootstrap_index):
        return
    try:
        client.indices.put_alias(index=setup.bootstrap_index, name=setup.alias)
    except ApiError as e:
        if refused_for_good(e):
            what = f"adding alias {setup.alias} to index {setup.bootstrap_index}"
            raise IndexSetupError(_refused_request_message(what, "manage", setup, e)) from e
        raise
    log.warning(
        "index %s existed without alias %s (created before the index template, by hand or by another "
        "tool): added the alias and the template's fields its mapping lacked",
        setup.bootstrap_index,
        setup.alias,
    )


def _add_new_fields(client: Elasticsearch, setup: IndexSetup) -> None:
    """Map the template's fields on the indices that already exist behind the alias. A template applies
    only to indices created after it: a release that maps a new field left today's index (and every older
    day a replay writes to) without it, and with `dynamic: false` the field was stored but not searchable,
    with no error, until the next day's index. Best effort: a field an index maps otherwise stays as it is
    (the whole request is refused then), said in one warning."""
    properties = setup.mappings.get("properties")
    if setup.bootstrap_index is None or not properties:
        return
    try:
        client.indices.put_mapping(index=setup.alias, properties=properties)
    except ApiError as e:
        if e.meta.status == 404:  # no index behind the alias yet
            return
        log.warning(
            "indices behind alias %s: could not map the template's fields on them (%s); documents in "
            "them are not searchable by fields they do not map, until the next day's index",
            setup.alias,
            error_summary(e),
        )


def _alias_exists(client: Elasticsearch, setup: IndexSetup, index: str | None = None) -> bool:
    """`HEAD /[index/]_alias/<alias>`; a refusal (a key without view_index_metadata) stops the setup like
    any other instead of being retried for ever."""
    try:
        return bool(client.indices.exists_alias(name=setup.alias, index=index))
    except ApiError as e:
        if refused_for_good(e):
            what = f"checking alias {setup.alias}" + (f" on index {index}" if index else "")
            raise IndexSetupError(_refused_request_message(what, "view_index_metadata", setup, e)) from e
        raise


def _refused_request_message(what: str, privilege: str, setup: IndexSetup, error: ApiError) -> str:
    """The refusal of a setup request, in one line; a HEAD answer has no body, so its reason is said here
    from the status alone."""
    status = error.meta.status
    names = f"{setup.alias} and {','.join(setup.index_patterns)}"
    fix = (
        "the credentials (elasticsearch.api_key or username) were not accepted: renew or correct them"
        if status == 401
        else f"give the credentials (elasticsearch.api_key or username) the {privilege} privilege on {names}"
        if status == 403
        else "fix what the server names, then start again"
    )
    return f"Elasticsearch refused {what}: {error_summary(error)}; {fix}"


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


def _put_policy(client: Elasticsearch, setup: IndexSetup) -> bool:
    """Put the delete-after policy: False where the server has no lifecycle API; IndexSetupError where it
    has one and refuses this policy (any other error is raised as it is, to be retried). Without the API,
    dated indices are deleted by finsent itself (`finsent.outputs.es_retention`, which `finsent run`
    starts when this returns False), as the warning says."""
    name, delete_after_days = setup.lifecycle_policy, setup.delete_after_days
    assert name is not None and delete_after_days is not None
    policy = {
        "phases": {
            "hot": {"min_age": "0ms", "actions": {"set_priority": {"priority": 100}}},
            "delete": {"min_age": f"{delete_after_days}d", "actions": {"delete": {}}},
        }
    }
    try:
        client.ilm.put_lifecycle(name=name, policy=policy)
    except ApiError as e:
        if lifecycle_unavailable(e):
            log.warning(
                "Elasticsearch server has no index lifecycle management (%s: %s); skipping policy %s%s",
                e.meta.status,
                error_reason(e),
                name,
                f": finsent deletes the indices {_dated_names(setup)} whose day is "
                f"{delete_after_days} or more days ago (elasticsearch.retention_days) itself, at start and "
                f"every {CLEANUP_INTERVAL_S / 60:.0f} min while it runs"
                if setup.dated_names
                else "",
            )
            return False
        if refused_for_good(e):  # 401/403 too: retried, a key without manage_ilm kept labelers unready
            raise IndexSetupError(_refused_policy_message(name, delete_after_days, e)) from e
        raise
    return True


def _dated_names(setup: IndexSetup) -> str:
    """The names of a dated family, as its retention matches them (`finsent-events-YYYY.MM.DD`)."""
    return ",".join(p.removesuffix("*") + "YYYY.MM.DD" for p in setup.index_patterns)


def lifecycle_unavailable(error: ApiError) -> bool:
    """Whether a refused `PUT _ilm/policy/<name>` says the server has no lifecycle API, rather than that
    it refuses the policy. Both can be a 400: a refused policy comes as an error object
    (`x_content_parse_exception` for a field or value it cannot parse, `illegal_argument_exception` for an
    invalid phase or action), a missing route as the flat "no handler found" message."""
    if error.meta.status in LIFECYCLE_UNAVAILABLE_STATUS:
        return True
    reason = error_reason(error).lower()
    return error.meta.status == 400 and any(r in reason for r in NO_ROUTE_REASONS)


def _refused_template_message(setup: IndexSetup, error: ApiError) -> str:
    reason = error_reason(error)
    hint = (
        "another index template matches the same index names at the same priority: give one of them another "
        "priority or other patterns, or choose another elasticsearch.index_prefix"
        if "priority" in reason.lower()
        else "fix what the server names, then start again"
    )
    return (
        f"Elasticsearch refused index template {setup.template_name} (patterns "
        f"{','.join(setup.index_patterns)}, priority {TEMPLATE_PRIORITY}): {error_summary(error)}; {hint}"
    )


def _refused_policy_message(name: str, delete_after_days: int, error: ApiError) -> str:
    fix = (
        "give the credentials (elasticsearch.api_key or username) the manage_ilm cluster privilege"
        if error.meta.status in (401, 403)
        else "fix the policy's settings (elasticsearch.retention_days)"
    )
    return (
        f"Elasticsearch refused lifecycle policy {name} (delete after {delete_after_days}d): "
        f"{error_summary(error)}. Without it no index "
        f"would ever be deleted: {fix}, or set elasticsearch.lifecycle_enabled=false to run without retention"
    )


def events_setup(settings: ElasticsearchSettings, *, now: datetime | None = None) -> IndexSetup:
    """The labeled-events family: `<prefix>-events-YYYY.MM.DD` behind alias `<prefix>-events`.

    The alias's first index is the day of `now` (UTC): a real daily index, not a placeholder. Today's
    messages go there anyway, so the template gives it the mappings, the alias and the lifecycle, which
    deletes it `retention_days` after its day like any other; empty, it adds nothing to counts or searches
    on the alias. A placeholder would not fit the scheme: with the lifecycle on, Elasticsearch refuses an
    undated name under the template (parse_origination_date), and one outside the template's pattern would
    keep stale mappings and never be deleted. Should no message come for `retention_days`, the lifecycle
    takes the alias with its last index, until the next start creates one again."""
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
        bootstrap_index=events_index(prefix, now or datetime.now(UTC)),
        dated_names=True,
    )
