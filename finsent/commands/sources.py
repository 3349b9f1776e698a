"""Sub-commands owned by the sources part of finsent."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this module's sub-commands to the `finsent` parser."""
    _ = (sub, argparse)
