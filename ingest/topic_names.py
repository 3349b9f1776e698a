"""Which Kafka topic names a broker accepts: checked when settings are read, so that a bad name fails at
start-up with the setting named, not at the first send (where kafka-python raises a ValueError that a
retry loop would meet forever)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_TOPIC_CHARS = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")


def legal_topic_name(name: str) -> str:
    """`name` if Kafka accepts it as a topic name (the broker's rule: 1-249 of `a-z A-Z 0-9 . _ -`, and not
    `.` or `..`); otherwise a ValueError that says why."""
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_TOPIC_CHARS:
        problem = f"it is longer than {MAX_TOPIC_CHARS} characters"
    elif name in (".", ".."):
        problem = f"it cannot be {name!r}"
    elif not _LEGAL.fullmatch(name):
        problem = f"{name!r} has characters other than a-z, A-Z, 0-9, '.', '_' and '-'"
    else:
        return name
    raise ValueError(f"not a Kafka topic name: {problem}")


TopicName = Annotated[str, AfterValidator(legal_topic_name)]
"""The type of every settings field that names a Kafka topic."""
