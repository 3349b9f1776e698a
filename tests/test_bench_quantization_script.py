"""bench/quantization.py compares the int8 variants: run it small, so that it keeps working, and check the
two facts its table rests on: fp32 and static int8 give a text the same label alone or in company."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("onnx", reason="the `train` extra is not installed")


def test_quantization_bench_runs_and_fp32_and_static_int8_ignore_their_company(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "quantization.py"), "-n", "80", "--rounds", "1"]
    # no checkpoint there: the fp32 reference is the shipped fp16 file, widened
    cmd += ["--alone", "24", "--calibration", "64", "--checkpoint", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {
        name: (float(rate), float(topic), float(changed))
        for name, rate, topic, changed in re.findall(
            r"^\| ([^|]+?) \| (\d+) \| ([\d.]+) / [\d.]+ \| ([\d.]+) / [\d.]+ \|$", out, flags=re.MULTILINE
        )
    }
    assert {
        "int8 dynamic (shipped)",
        "fp32 (the fp16 file widened)",
        "int8 static (QDQ, MinMax ranges)",
    } <= set(rows)
    assert rows["fp32 (the fp16 file widened)"][1:] == (1.0, 0.0)
    assert rows["int8 static (QDQ, MinMax ranges)"][2] == 0.0
    assert all(rate > 0 for rate, _, _ in rows.values())
