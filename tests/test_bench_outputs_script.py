"""bench/outputs.py carries copies of the output path's previous code: run it small, so that it keeps
working and keeps checking that the old and new encodings carry the same JSON."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_outputs_bench_runs_and_prints_every_step() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "outputs.py"), "--n", "300", "--rounds", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    number = r"\s+[\d.]+ \|"
    rows = [line for line in out.splitlines() if re.match(rf"\| \S.* \|{number}{number}{number}$", line)]
    assert [re.sub(r" \(.*\)", "", row.split("|")[1].split(":")[0]).strip() for row in rows] == [
        "labeled events",
        "Elasticsearch _bulk body",
        "_bulk response of the local server, parsed",
        "send + flush of the labeled events to the local Kafka server",
        "all four",
        "document + labeled events + index name",
    ]
