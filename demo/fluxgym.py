"""A FluxGym-shaped training tree with a real (tiny) trainer, for the demo and end-to-end tests.

FluxGym writes ``outputs/<name>/train.sh`` and runs ``bash outputs/<name>/train.sh`` with
its own root as the working directory; the script calls
``accelerate launch ... sd-scripts/flux_train_network.py``.  Here ``sd-scripts/`` holds a
trainer under that name: the faithful sd-scripts simulator (tests/fixtures/sd_scripts_sim.py,
the default) or the older idealised tiny trainer (tests/fixtures/tiny_train.py); the script
is the exact shape of tests/fixtures/fluxgym/train.sh with the root's path substituted and
the trainer's own flags appended the way FluxGym appends advanced-tab flags.

For the simulator the run also gets what FluxGym's app.py writes beside the script:
``outputs/<name>/dataset.toml`` (``gen_toml``: one dataset, batch_size 1, one subset with
``image_dir = datasets/<name>`` and ``num_repeats``), the images in ``datasets/<name>/``
(each with its caption), and ``outputs/<name>/sample_prompts.txt``.  The script keeps
FluxGym's ``--max_train_epochs 16 --save_every_n_epochs 4``, so steps per epoch are
images x repeats and the run is 16 epochs long unless flags say otherwise.
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
SD_SCRIPTS_SIM = REPO / "tests" / "fixtures" / "sd_scripts_sim.py"
FIXTURE_ROOT = "/workspace/fluxgym"
# A 1x1 PNG: the simulator only counts images, FluxGym's dataset folder holds real ones.
_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                     "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


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


def write_dataset(run: FluxGymRun, *, images: int, repeats: int) -> None:
    """What FluxGym's app.py writes for a run's data: ``gen_toml``'s dataset.toml, the
    images and captions in ``datasets/<name>``, and sample_prompts.txt."""
    folder = run.root / "datasets" / run.name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        (folder / f"{i:03d}.png").write_bytes(_PNG)
        (folder / f"{i:03d}.txt").write_text(f"{run.name}, picture {i}\n")
    (run.output_dir / "dataset.toml").write_text(f"""[general]
shuffle_caption = false
caption_extension = '.txt'
keep_tokens = 1

[[datasets]]
resolution = 512
batch_size = 1
keep_tokens = 1

  [[datasets.subsets]]
  image_dir = '{folder}'
  class_tokens = '{run.name}'
  num_repeats = {repeats}""")
    (run.output_dir / "sample_prompts.txt").write_text(f"{run.name} standing in a garden\n")


def make_run(root: Path, name: str, *, flags: list[str], trainer: Path = SD_SCRIPTS_SIM,
             images: int = 5, repeats: int = 1) -> FluxGymRun:
    """Create ``root`` (if needed) and a run ``name`` whose train.sh passes ``flags``.

    ``flags`` are appended after ``--save_state`` on the script's last line, where FluxGym
    puts the advanced options a user changed.  ``trainer`` becomes
    ``sd-scripts/flux_train_network.py`` (one trainer per root); for the simulator,
    ``images`` x ``repeats`` make the steps of one epoch.
    """
    root = root.resolve()
    scripts = root / "sd-scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    target = scripts / "flux_train_network.py"
    if not target.exists():
        shutil.copyfile(trainer, target)
    elif target.read_bytes() != trainer.read_bytes():
        raise ValueError(f"{root} already runs another trainer as {target}")
    run = FluxGymRun(root, name)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if trainer == SD_SCRIPTS_SIM:
        write_dataset(run, images=images, repeats=repeats)
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
