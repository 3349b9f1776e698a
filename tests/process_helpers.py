"""Helpers for tests that run finsent's commands as processes (`python -m finsent ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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
    """Read `stream` (into `seen`) until a line holds `text`; AssertionError at `timeout_s` even while the
    process writes nothing (a blocking read alone would wait for ever). The lines are read in a thread
    that stops at the one wanted, so the caller reads the rest of the stream itself."""
    found = threading.Event()
    ended = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            if text in line:
                found.set()
                return
        ended.set()

    threading.Thread(target=read, daemon=True, name="wait-for-line").start()
    deadline = time.monotonic() + timeout_s
    while not found.is_set():
        if ended.is_set():
            raise AssertionError(f"ended before {text!r}:\n{''.join(seen)}")
        assert time.monotonic() < deadline, f"no {text!r} after {timeout_s:.0f} s:\n{''.join(seen)}"
        found.wait(0.05)
