"""bench/gpu.py has never run on a GPU here: run its check and sweeps on the CPU so that the script a GPU
session depends on cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_script_runs_its_sweeps_on_the_cpu() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "-n", "120", "--check-n", "40"]
    cmd += ["--batches", "16,64", "--slice-tokens", "0,512"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "topic agreement 1.0000, sentiment agreement 1.0000" in out
    assert "| 16 |" in out and "| 64 |" in out
    assert "| 0 |" in out and "| 512 |" in out


def test_gpu_bench_script_without_a_gpu_checks_the_cpu_fallback() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "-n", "64"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "NO USABLE GPU" in out and "CPU fallback ok: device=cpu" in out
