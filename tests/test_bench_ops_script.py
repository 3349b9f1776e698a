"""bench/ops.py profiles the served graph: run it small, so that it keeps working, and check what it
exists to show: the served graph runs no SkipLayerNormalization, and ONNX Runtime would fuse it back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ops_bench_profiles_the_served_graph_against_the_fused_one() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "ops.py"), "-n", "60", "--top", "40"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    shares = {
        op: (float(served), float(fused))
        for op, served, fused in re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|$", out, flags=re.MULTILINE)
    }
    assert shares["SkipLayerNormalization"][0] == 0.0 and shares["SkipLayerNormalization"][1] > 0.0
    assert shares["LayerNormalization"][0] > 0.0
    assert 0.99 <= sum(s for s, _ in shares.values()) <= 1.01  # --top 40 lists every operator type
