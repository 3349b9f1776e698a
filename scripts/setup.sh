#!/usr/bin/env bash
# Create .venv and install finsent into it. `setup.sh` installs what running needs;
# `setup.sh dev` adds training (torch CPU, transformers) and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
case "$mode" in
  run) .venv/bin/python -m pip install -q -e '.[demo]' ;;
  dev) .venv/bin/python -m pip install -q -e '.[train,dev]' ;;
  *) echo "usage: scripts/setup.sh [run|dev]" >&2; exit 2 ;;
esac
echo "finsent installed in .venv ($mode)"
