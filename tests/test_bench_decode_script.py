"""bench/decode.py carries copies of the consume path's previous enrichment code: run it small, so that it
keeps working and keeps checking that the old and new code decode every record alike."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_decode_bench_runs_and_prints_every_step() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "decode.py"), "--n", "300", "--rounds", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = re.findall(r"^\| (\S[^|]*?) +\| +([\d.]+) \| +([\d.]+) \| +([\d.]+) \|$", out, flags=re.MULTILINE)
    names = [name.split(":")[0] for name, *_ in rows]
    assert names == ["content hash", "cashtags", "decode of a record, whole"]
    assert all(float(before) > 0 and float(after) > 0 for _, before, after, _ in rows)
