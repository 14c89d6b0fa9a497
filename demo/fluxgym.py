"""A FluxGym-shaped training tree with a real (tiny) trainer, for the demo and end-to-end tests.

FluxGym writes ``outputs/<name>/train.sh`` and runs ``bash outputs/<name>/train.sh`` with
its own root as the working directory; the script calls
``accelerate launch ... sd-scripts/flux_train_network.py``.  Here ``sd-scripts/`` holds
the tiny trainer (tests/fixtures/tiny_train.py) under that name, and the script is the
exact shape of tests/fixtures/fluxgym/train.sh with the root's path substituted and the
trainer's own flags appended the way FluxGym appends advanced-tab flags.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = REPO / "tests" / "fixtures" / "fluxgym" / "train.sh"
TINY_TRAIN = REPO / "tests" / "fixtures" / "tiny_train.py"
FIXTURE_ROOT = "/workspace/fluxgym"


@dataclass(frozen=True)
class FluxGymRun:
    """One run's paths inside a FluxGym root."""

    root: Path
    name: str

    @property
    def output_dir(self) -> Path:
        return self.root / "outputs" / self.name

    @property
    def script(self) -> Path:
        return self.output_dir / "train.sh"

    @property
    def log(self) -> Path:
        return self.output_dir / "train.log"

    @property
    def record(self) -> Path:
        """JSON lines the trainer appends: start (with the step resumed from), save, finish."""
        return self.output_dir / "events.jsonl"


def make_run(root: Path, name: str, *, flags: list[str]) -> FluxGymRun:
    """Create ``root`` (if needed) and a run ``name`` whose train.sh passes ``flags``.

    ``flags`` are appended after ``--save_state`` on the script's last line, where FluxGym
    puts the advanced options a user changed.
    """
    root = root.resolve()
    scripts = root / "sd-scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    trainer = scripts / "flux_train_network.py"
    if not trainer.exists():
        shutil.copyfile(TINY_TRAIN, trainer)
    run = FluxGymRun(root, name)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    text = FIXTURE_SCRIPT.read_text().replace(FIXTURE_ROOT, str(root))
    text = text.replace("outputs/my-lora", f"outputs/{name}")
    text = text.replace("--output_name my-lora", f"--output_name {name}")
    lines = text.rstrip("\n").split("\n")
    all_flags = [*flags, "--record", str(run.record)]
    lines[-1] = lines[-1] + " " + " ".join(shlex.quote(f) for f in all_flags)
    run.script.write_text("\n".join(lines) + "\n")
    return run


def start_run(run: FluxGymRun, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the run as FluxGym does: ``bash outputs/<name>/train.sh`` from the root.

    Output is appended to the run's train.log, the file trainguard's exporter follows.
    The run gets its own session so that killing it (as the remediator does) never
    reaches the caller.
    """
    full_env = dict(os.environ if env is None else env)
    log = open(run.log, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            ["bash", str(run.script.relative_to(run.root))], cwd=run.root, env=full_env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    finally:
        log.close()
