"""argparse types for numeric flags: a usage error naming the bound at once, instead of a late failure
(a traceback from deep inside the work, or a run that does nothing)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from ingest.topic_names import legal_topic_name


def non_negative(kind: type[float] | type[int]) -> Any:
    """An argparse type: `kind`, rejecting negative numbers with a usage error instead of a late failure."""
    return at_least(kind, 0)


def at_least(kind: type[float] | type[int], minimum: int) -> Any:
    """An argparse type: a finite `kind` of at least `minimum`, else a usage error naming the bound."""
    return _checked(kind, lambda v: v >= minimum, f"must be {minimum} or more")


def positive(kind: type[float] | type[int]) -> Any:
    """An argparse type: a finite `kind` above 0."""
    return _checked(kind, lambda v: v > 0, "must be more than 0")


def _checked(kind: type[float] | type[int], ok: Callable[[float], bool], bound: str) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{bound}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def topic_name(text: str) -> str:
    """An argparse type: a name Kafka accepts for a topic (kafka-python's send() raised a ValueError)."""
    try:
        return legal_topic_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


fraction: Callable[[str], float] = _checked(float, lambda v: 0 < v < 1, "must be between 0 and 1")
"""An argparse type: a number strictly between 0 and 1."""
