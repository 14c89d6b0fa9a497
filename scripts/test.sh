#!/usr/bin/env bash
# The whole check, as CI runs it: set-up, lint, types, then every test (unit, integration
# with real Prometheus/Alertmanager, end to end).  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff";  ruff check .
echo "== mypy";  mypy
echo "== pytest"
pytest "$@"
