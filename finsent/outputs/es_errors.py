"""What an Elasticsearch error answer says, read the one way every writer to Elasticsearch needs it.

Elasticsearch answers an error with `{"error": {"type", "reason", "root_cause": [...], "caused_by"}, ...}`;
a missing route gets a flat `{"error": "no handler found ..."}`, and proxies or other servers send bodies
without "error" or no JSON at all. Only the nested object carries an error type."""

from __future__ import annotations

from typing import Any

from elasticsearch import ApiError


def error_type(error: ApiError) -> str:
    """The `error.type` of an Elasticsearch error answer, else its first root cause's; "" where there is
    none (a flat message, a body without "error", plain text): such answers come from elsewhere."""
    detail = _error_object(error.body)
    if detail is None:
        return ""
    kind = detail.get("type")
    if not kind:
        causes = detail.get("root_cause")
        first = causes[0] if isinstance(causes, list) and causes else None
        kind = first.get("type") if isinstance(first, dict) else None
    return str(kind) if kind else ""


def error_reason(error: ApiError) -> str:
    """The reason of an Elasticsearch error answer, with its `caused_by` (where a parse error names the
    value at fault); the message itself for a flat `{"error": "..."}`, else the whole body (a plain-text
    body, a proxy's own JSON), which is all there is to tell what refused the request."""
    detail = _error_object(error.body)
    if detail is None:
        return _flat_message(error.body)
    reason = str(detail.get("reason", ""))
    cause = detail.get("caused_by")
    if isinstance(cause, dict) and cause.get("reason"):
        reason = f"{reason} (caused by {cause.get('type', 'error')}: {cause['reason']})"
    return reason


def error_summary(error: ApiError) -> str:
    """Status, type and reason of an error answer on one line (`403 security_exception: ...`); a HEAD
    answer has no body, and says only its status (`403 (no body)`)."""
    if not error.body:
        return f"{error.meta.status} (no body)"
    return f"{error.meta.status} {error_type(error) or 'error'}: {error_reason(error)}"


def error_object(error: ApiError) -> dict[str, Any]:
    """The nested error object of an answer, which is what a bulk item's `error` is (so one rule reads
    both); {} where there is none."""
    return _error_object(error.body) or {}


def _error_object(body: Any) -> dict[str, Any] | None:
    """The nested error object of an answer's body, or None."""
    detail = body.get("error") if isinstance(body, dict) else None
    return detail if isinstance(detail, dict) else None


def _flat_message(body: Any) -> str:
    flat = body.get("error") if isinstance(body, dict) else None
    return flat if isinstance(flat, str) else str(body)
