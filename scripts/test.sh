#!/usr/bin/env bash
# The test command: set up .venv with dev extras, then run the whole test suite. The tests start the servers
# they need (noida-db, Tansu, Alertmanager, Prometheus) on free loopback ports and stop them by PID.
# Prometheus and Alertmanager come from Debian: apt-get install -y prometheus prometheus-alertmanager.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"
