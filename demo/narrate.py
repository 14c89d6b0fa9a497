"""Watch a running stack and say, as it happens, what each part sees and does.

The narrator only reads what a person could read: the exporter's /metrics, Prometheus'
alerts API, Alertmanager's alerts API, the remediator's log (one line per decision) and
the trainer's own event file.  It prints a line whenever one of those changes.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from demo.stack import Stack


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exporter's samples as {(name, sorted labels): value}."""
    text = stack.get("exporter", "/metrics").decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def job_value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              job: str) -> float | None:
    return samples.get((name, (("training_job", job),)))


@dataclass
class Narrator:
    stack: Stack
    job: str
    events_file: Path
    out: TextIO = sys.stdout
    started: float = field(default_factory=time.monotonic)
    _last: dict[str, Any] = field(default_factory=dict)
    _remediator_offset: int = 0
    _events_offset: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def say(self, who: str, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {who:<12} {text}", file=self.out, flush=True)

    def _changed(self, key: str, value: Any) -> bool:
        if self._last.get(key) == value:
            return False
        self._last[key] = value
        return True

    def poll(self) -> None:
        """Look at every source once and narrate what changed."""
        for step in (self._trainer, self._exporter, self._prometheus, self._alertmanager,
                     self._remediator):
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                step()

    # ------------------------------------------------------------------ sources
    def _trainer(self) -> None:
        with self.events_file.open() as f:
            f.seek(self._events_offset)
            chunk = f.read()
            self._events_offset = f.tell()
        for line in chunk.splitlines():
            event = json.loads(line)
            self.events.append(event)
            kind = event["event"]
            if kind == "start":
                where = (f"resuming from {event['resume']} at step {event['step']}"
                         if event.get("resume") else "starting from step 0")
                self.say("training", f"pid {event['pid']} {where}")
            elif kind == "save" and event.get("kind", "state") == "state":
                self.say("training", f"saved state at step {event['step']}")
            elif kind == "hang":
                self.say("training", f"HANGS at step {event['step']} "
                         f"({'GPU idle' if event['mode'] == 'idle' else 'GPU spinning'}) "
                         "- from here on nobody touches anything")
            elif kind == "crash":
                self.say("training", f"CRASHES at step {event['step']}")
            elif kind == "finish":
                self.say("training", f"finished all {event['step']} steps, weights written")

    def _exporter(self) -> None:
        samples = scrape(self.stack)
        up = job_value(samples, "trainguard_job_process_up", self.job)
        step = job_value(samples, "trainguard_job_step", self.job)
        total = job_value(samples, "trainguard_job_total_steps", self.job)
        util = job_value(samples, "trainguard_job_gpu_utilization_ratio", self.job)
        ckpt = job_value(samples, "trainguard_checkpoint_latest_step", self.job)
        if self._changed("up", up):
            self.say("exporter", f"process up = {up:g}" if up is not None else "no process data")
        if self._changed("util_bucket", None if util is None else round(util, 1)):
            self.say("exporter", f"GPU utilization of the job's GPU = {util:.0%}"
                     if util is not None else "job holds no GPU")
        if step is not None and self._changed("step_decade", int(step) // 10):
            self.say("exporter", f"step {step:g}/{total:g}" if total else f"step {step:g}")
        usable = sum(samples.get(("trainguard_checkpoints",
                                  (("status", status), ("training_job", self.job))), 0.0)
                     for status in ("valid", "repairable"))
        if ckpt is not None and self._changed("ckpt", (ckpt, usable > 0)):
            self.say("exporter", f"newest usable checkpoint: step {ckpt:g}" if usable
                     else "no usable checkpoint yet")

    def _prometheus(self) -> None:
        alerts = self.stack.firing_alerts()
        mine = sorted(f"{a['labels']['alertname']}={a['state']}" for a in alerts
                      if a["labels"].get("training_job") == self.job)
        if self._changed("prom", mine):
            self.say("prometheus", "alerts: " + (", ".join(mine) if mine else "none"))

    def _alertmanager(self) -> None:
        alerts = self.stack.get_json("alertmanager", "/api/v2/alerts")
        mine = sorted(a["labels"]["alertname"] for a in alerts
                      if a["labels"].get("training_job") == self.job)
        if self._changed("am", mine):
            if mine:
                self.say("alertmanager", f"holds {', '.join(mine)}; "
                         "remediate=\"true\" routes to the remediator's webhook")
            else:
                self.say("alertmanager", "holds no alert for this run")

    def _remediator(self) -> None:
        path = self.stack.workdir / "logs" / "remediator.log"
        with path.open(errors="replace") as f:
            f.seek(self._remediator_offset)
            chunk = f.read()
            self._remediator_offset = f.tell()
        for line in chunk.splitlines():
            if " INFO " in line or " WARNING " in line or " ERROR " in line:
                message = line.split(": ", 1)[-1]
                self.say("remediator", message)

    # ------------------------------------------------------------------ helpers
    def watch_until(self, done: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
        """Narrate until ``done()`` or ``timeout`` seconds; True when done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if done():
                self.poll()
                return True
            time.sleep(every)
        return False

    def first(self, kind: str, after: float = 0.0) -> dict[str, Any] | None:
        for event in self.events:
            if event["event"] == kind and event["time"] >= after:
                return event
        return None
