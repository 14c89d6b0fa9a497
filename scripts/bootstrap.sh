#!/usr/bin/env bash
# Installs everything trainguard's tests and demo need on a bare Debian/Ubuntu machine:
# the Prometheus and Alertmanager binaries (Debian packages, also promtool/amtool),
# docker-compose (only to validate the compose file), gcc (builds the fake NVML library),
# chromium (the status page is checked in a real headless browser),
# Slurm and munge (the Slurm tests start their own single-node cluster on loopback; the
# packages' own services are never started or used), and a virtual environment in .venv
# with trainguard and its torch extra.
# Safe to run again: every step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
            amtool:prometheus-alertmanager docker-compose:docker-compose gcc:gcc \
            chromium:chromium \
            slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-wlm munged:munge; do
  # The Slurm and munge daemons live in /usr/sbin, which a user's PATH may lack.
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] \
    || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "bootstrap: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.trainguard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing trainguard[torch,dev] into .venv (torch CPU build)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  # torch first: a CPU build where this machine keeps one (the tests never touch a GPU
  # through torch, and the CUDA build is gigabytes); PyPI's default elsewhere.
  torch_req="torch>=2.0"
  wheel=$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$wheel" ]; then torch_req="$wheel"; fi
  .venv/bin/python -m pip install -q --disable-pip-version-check "$torch_req"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[torch,dev]'
  touch "$stamp"
fi
