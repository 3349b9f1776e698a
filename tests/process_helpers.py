"""Helpers for tests that run finsent's commands as processes (`python -m finsent ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def finsent_popen(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    """`python -m finsent ARGS` with only `env` as its FINSENT_* settings, stderr piped."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("FINSENT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "finsent", *args],
        env={"FINSENT_METRICS__ENABLED": "false", **base, **env},
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_line(stream: IO[str], text: str, seen: list[str], timeout_s: float = 60) -> None:
    """Read `stream` (into `seen`) until a line holds `text`."""
    deadline = time.monotonic() + timeout_s
    for line in stream:
        seen.append(line)
        if text in line:
            return
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError(f"ended before {text!r}:\n{''.join(seen)}")
