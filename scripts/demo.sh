#!/usr/bin/env bash
# The live demo: set-up (as for the tests), then a small real training run hangs part-way
# and the real stack (exporter, Prometheus, Alertmanager, remediator) brings it back while
# the terminal narrates.  Extra arguments go to the demo (see: .venv/bin/python -m demo -h).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m demo "$@"
