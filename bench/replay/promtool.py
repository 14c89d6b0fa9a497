"""Run a scraped timeline through real rules with ``promtool test rules`` and read back
every alert that fired.

promtool evaluates the rule files over the input series exactly as Prometheus would
(every ``evaluation_interval``, ``for:`` included) and stores the ``ALERTS`` series; the
generated test asks, at the end, for each firing alert's first and last firing time and
how many evaluations it fired.  It expects nothing, so promtool reports what it got:
that report is parsed.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from replay.series import SCRAPE, Series, promtool_values, series_selector

_GOT_RE = re.compile(r'\{([^{}]*)\} ([-+0-9.E]+|NaN)')
_EXPR_RE = re.compile(r'expr: "(?P<expr>(?:[^"\\]|\\.)*)", time: ')


@dataclass(frozen=True)
class Fired:
    alert: str            # alertname, with its reason when it has one
    remediate: bool
    first: float          # seconds
    last: float
    evaluations: int


def write_test(path: Path, rule_files: list[Path], series: Series, count: int) -> None:
    end = (count - 1) * SCRAPE
    window = f"{int(end)}s"
    sel = 'ALERTS{alertstate="firing"}'
    doc = {
        "rule_files": [str(p) for p in rule_files],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": series_selector(name, labels),
                              "values": promtool_values(points, count)}
                             for (name, labels), points in sorted(series.items())],
            "promql_expr_test": [
                {"expr": f"min_over_time((timestamp({sel}))[{window}:15s])",
                 "eval_time": window, "exp_samples": []},
                {"expr": f"max_over_time((timestamp({sel}))[{window}:15s])",
                 "eval_time": window, "exp_samples": []},
                {"expr": f"count_over_time({sel}[{window}])",
                 "eval_time": window, "exp_samples": []},
            ],
        }],
    }
    path.write_text(yaml.safe_dump(doc, width=1 << 20))


def run(path: Path) -> list[Fired]:
    proc = subprocess.run(["promtool", "test", "rules", path.name], cwd=path.parent,
                          capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return []
    if "got:" not in out:
        raise RuntimeError(f"promtool failed on {path}:\n{out}")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for block in out.split("expr: ")[1:]:
        m = _EXPR_RE.match("expr: " + block)
        if m is None:
            continue
        kind = m["expr"].split("(")[0]
        got = block.split("got:", 1)[1] if "got:" in block else ""
        for labels, value in _GOT_RE.findall(got.split("\n")[0]):
            found.setdefault(kind, {})[_key(labels)] = float(value)
    fired = []
    for key, first in found.get("min_over_time", {}).items():
        lbl = dict(key)
        name = lbl.get("alertname", "?")
        if "reason" in lbl:
            name += f"({lbl['reason']})"
        fired.append(Fired(name, lbl.get("remediate") == "true", first,
                           found.get("max_over_time", {}).get(key, first),
                           int(found.get("count_over_time", {}).get(key, 0))))
    return sorted(fired, key=lambda f: f.first)


def _key(labels: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
    return tuple(sorted(pairs))
