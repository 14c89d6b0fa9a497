"""Fixtures for the monitoring-stack tests (deploy/): real promtool, amtool, prometheus,
prometheus-alertmanager and docker-compose, all on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # for deploy_testlib
    sys.path.insert(0, str(HERE))
