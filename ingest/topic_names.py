"""Which Kafka topic names a broker accepts: checked when settings are read, so that a bad name fails at
start-up with the setting named, not at the first send (where kafka-python raises a ValueError that a
retry loop would meet forever)."""

from __future__ import annotations

import re

MAX_TOPIC_CHARS = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")


def topic_name_problem(name: str) -> str | None:
    """Why Kafka refuses `name` as a topic name, or None (the broker's rule: 1-249 of `a-z A-Z 0-9 . _ -`,
    and not `.` or `..`)."""
    if not name:
        return "is empty"
    if len(name) > MAX_TOPIC_CHARS:
        return f"is longer than {MAX_TOPIC_CHARS} characters"
    if name in (".", ".."):
        return f"cannot be {name!r}"
    if not _LEGAL.fullmatch(name):
        return f"{name!r} holds characters other than a-z, A-Z, 0-9, '.', '_' and '-'"
    return None
