"""bench/alert_memory.py sizes `alerts.max_keys` in the docs through the worker's own fill, restore and save
code: run it small, so that it keeps working as that code changes and keeps printing every row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def test_alert_memory_bench_runs_and_prints_every_row() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "alert_memory.py"),
        *("--keys", "200", "--partitions", "2", "--max-keys", "200", "--template-keys", "100"),
        *("--windows", "10"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "`python bench/alert_memory.py --keys 200 --partitions 2" in out  # the command is recorded
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:3] == ["state", "partitions x keys", "heap/key B"] and head[-1] == "save pk MiB"
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(head), line
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    assert list(rows) == [
        "steady (10 windows), filled by events",
        "warm-up (2 windows)",
        "just warmed (10 windows)",
        "steady (10 windows)",
        "steady (10 windows) + flood window",
        "steady (10 windows), the save",
    ]
    assert rows["steady (10 windows), filled by events"]["partitions x keys"] == "1 x 100"
    assert rows["steady (10 windows), the save"]["partitions x keys"] == "2 x 200"
    # the flood window holds the new-key cap, max(max_keys / 10, 100), and skips as many
    flood = rows["steady (10 windows) + flood window"]["partitions x keys"]
    assert flood == "1 x 200 + 100 in a window (100 key_cap)"
    not_measured = {  # "-": what the row has no measure of
        ("steady (10 windows), filled by events", "restore pk MiB"),  # no restore
        ("steady (10 windows) + flood window", "restore pk MiB"),
        ("steady (10 windows) + flood window", "save +/key B"),  # per key of the window: meaningless
        ("steady (10 windows), the save", "heap/key B"),  # over --max-keys keys: not traced
        ("steady (10 windows), the save", "save +/key B"),
    }
    for name, row in rows.items():
        for column, cell in list(row.items())[2:]:
            if (name, column) in not_measured:
                assert cell == "-", (name, column, cell)
                continue
            assert NUMBER.match(cell), (name, column, cell)
            if (
                column != "RSS/key B"
            ):  # an RSS difference of a few hundred keys is within the allocator's slack
                assert float(cell.replace(",", "")) > 0, (name, column, cell)
