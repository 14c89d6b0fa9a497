"""The live demo: a FluxGym-shaped run hangs part-way and trainguard brings it back.

Run it with ``bash scripts/demo.sh`` (which installs what is needed first), or
``.venv/bin/python -m demo``.  It starts the real stack on loopback (exporter,
Prometheus with the project's rules, Alertmanager, remediator), starts a small real
accelerate training run through a FluxGym train.sh, and narrates until the run finishes.
No GPU is needed: the run trains on the CPU and a fake NVML library plays its GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from demo.fluxgym import FluxGymRun, make_run, start_run
from demo.narrate import Narrator
from demo.stack import FAST_TUNABLES, REPO, Stack, detection_seconds

sys.path.insert(0, str(REPO / "tests"))
from helpers.fakenvml import FakeGPUs, env_for

JOB = "my-lora"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the demo's files go (default: .tg-demo/<time> in the repo)")
    p.add_argument("--hang", choices=["idle", "spin"], default="idle",
                   help="idle: the GPU goes quiet; spin: GPU 100%% busy at idle power")
    p.add_argument("--epochs", type=int, default=8, help="epochs of 5 steps each")
    p.add_argument("--hang-at", type=int, default=23)
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--no-wait", action="store_true",
                   help="stop the stack as soon as the run finishes, even on a terminal")
    return p.parse_args(argv)


def setup(args: argparse.Namespace, workdir: Path) -> tuple[Stack, FluxGymRun, dict[str, str]]:
    gpus = FakeGPUs(workdir / "fake-gpus")
    gpus.add(1)
    env = env_for(gpus.root)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # The faithful sd-scripts simulator behind FluxGym's train.sh: 5 images, one repeat,
    # so 5 steps an epoch; a state every 2 epochs (the script's own --save_every_n_epochs 4
    # and --max_train_epochs 16 are overridden the way a user's advanced flags would).
    run = make_run(workdir / "fluxgym", JOB, images=5, flags=[
        "--max_train_epochs", str(args.epochs), "--save_every_n_epochs", "2",
        "--sim_step_seconds", "0.25", "--sim_sample_seconds", "0",
        "--hang_at_step", str(args.hang_at),
        "--hang_mode", args.hang, "--once_marker", str(workdir / "hang-once"),
        "--fake_gpu", str(gpus.path(0))])
    job: dict[str, Any] = {
        "name": JOB, "output_dir": str(run.output_dir),
        "launch": {"script": str(run.script), "workdir": str(run.root)},
        "log_file": str(run.log), "startup_grace_seconds": FAST_TUNABLES["startup_grace_seconds"],
    }
    stack = Stack.prepare(workdir, [job], exporter={"writing_fresh_seconds": 10},
                          remediator={"kill_grace_seconds": 3, "verify_alive_seconds": 2,
                                      "gpu_release_timeout_seconds": 5})
    return stack, run, env


def where_to_look(stack: Stack, stays_up: bool) -> list[str]:
    """The "Where to look" lines: each page, and when it goes away (with the demo's stack,
    which stops when the demo ends)."""
    pages = stack.where_to_look()
    width = max(len(what) for what, _ in pages) + 1
    lines = ["Where to look" + (" (until you press Enter: then the demo stops its stack, "
                                "and these pages with it)" if stays_up else
                                " (only until the demo exits, right after this: its stack "
                                "stops with it; to look around, run the demo in a terminal "
                                "without --no-wait, or start your own stack with "
                                "deploy/run-stack.sh)")]
    lines += [f"  {what + ':':<{width}} {url}" for what, url in pages]
    lines += [f"  everything the demo wrote, logs included: {stack.workdir}"]
    return lines


def summary(narrator: Narrator, stack: Stack, run: FluxGymRun, hang_kind: str,
            stays_up: bool) -> None:
    hang = narrator.first("hang")
    resumed = narrator.first("start", after=hang["time"]) if hang else None
    stepped = narrator.first("first_step", after=resumed["time"]) if resumed else None
    tunable = "gpu_idle_seconds" if hang_kind == "idle" else "gpu_spin_seconds"
    print()
    print("What happened")
    if hang and resumed and stepped:
        to_resume = resumed["time"] - hang["time"]
        to_step = stepped["time"] - hang["time"]
        print(f"  hang at step {hang['step']} -> resumed process after {to_resume:.1f}s "
              f"(from step {resumed['step']}), first new step after {to_step:.1f}s")
        configured = detection_seconds(FAST_TUNABLES[tunable])
        print(f"  configured detection time: {configured:g}s ({tunable} "
              f"{FAST_TUNABLES[tunable]:g}s + the rules' for: + Alertmanager's group_wait); "
              f"pipeline overhead beyond it: {to_resume - configured:.1f}s to the new process, "
              f"{to_step - configured:.1f}s to the first new step")
    print(f"  the user's script is untouched: {run.script}")
    print(f"  the resumed copy trainguard wrote beside it and ran: "
          f"{', '.join(p.name for p in run.output_dir.glob('*trainguard*')) or 'none'}")
    print()
    for line in where_to_look(stack, stays_up):
        print(line)
    print()
    print("Point trainguard at a real FluxGym run")
    print("  trainguard init /workspace/fluxgym/outputs/<your-lora>  # writes trainguard.yaml")
    print("  deploy/run-stack.sh --config /workspace/fluxgym/trainguard.yaml  # no Docker needed")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or REPO / ".tg-demo" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    stack, run, env = setup(args, workdir)
    print(f"trainguard demo in {workdir}")
    print(f"a {args.epochs * 5}-step LoRA-shaped run will hang at step {args.hang_at}; "
          f"detection is shortened to seconds for the demo ({workdir / 'tunables.yml'})")
    print()
    narrator = Narrator(stack, JOB, run.record)
    try:
        stack.start(env=env)
        narrator.say("stack", "exporter, Prometheus, Alertmanager and remediator are up")
        run.record.touch()
        start_run(run, env)
        narrator.say("stack", f"started: bash {run.script.relative_to(run.root)} "
                     f"(from {run.root})")
        finished = narrator.watch_until(lambda: narrator.first("finish") is not None,
                                        timeout=args.timeout)
        if not finished:
            print(f"\nthe run did not finish within {args.timeout:.0f}s; remediator log:\n"
                  + stack.log_tail("remediator"), file=sys.stderr)
            return 1
        stays_up = sys.stdin.isatty() and not args.no_wait
        summary(narrator, stack, run, args.hang, stays_up)
        if stays_up:
            print("\nThe stack stays up so you can look around; press Enter (or Ctrl-C) to stop.")
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
