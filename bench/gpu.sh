#!/usr/bin/env bash
# GPU check + batch sweep for finsent's fp16 model (ONNX Runtime CUDA provider). Prepared for a machine
# with an NVIDIA GPU (e.g. one H200); finishes well within 10 minutes. Without a usable GPU it reports
# why, checks the CPU fallback and exits 0.
#   bash bench/gpu.sh [-n TEXTS] [--batches 64,256,...]
# Wheels: put onnxruntime-gpu (and, if the machine has no Python deps, the project's wheels) under .whl/
# (gitignored); they are installed offline first. Otherwise the installed onnxruntime(-gpu) is used.
# On a machine whose calls carry at most 64 MiB, use bench/gpu_payload.py instead (docs/model.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "nvidia-smi not found: no NVIDIA GPU visible"
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing wheels from .whl/ (offline)"
  "$PY" -m pip install --quiet --no-index --find-links .whl .whl/*.whl || echo "wheel install failed; continuing"
  if compgen -G ".whl/onnxruntime_gpu-*.whl" >/dev/null; then
    # onnxruntime and onnxruntime-gpu share a module: keep only the GPU build
    "$PY" -m pip uninstall --quiet -y onnxruntime >/dev/null 2>&1 || true
    "$PY" -m pip install --quiet --no-index --force-reinstall --no-deps .whl/onnxruntime_gpu-*.whl
  fi
fi
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
timeout 540 "$PY" bench/gpu.py "$@"
