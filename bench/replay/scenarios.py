"""The replay corpus: healthy runs that must never alarm, and hangs in every phase.

Lengths come from the issue (a run stepping every ~2 s; a 4-minute sampling phase every
epoch, a 2-minute caching phase, 1-minute saves) and from tunables.yml's reasons (FLUX LoRA
steps ~2 s on a 4090/H100 and ~10-12 s on 12-16 GB cards; sampling 4 prompts of 20
denoising steps; a full fine-tune's state save taking minutes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from replay.timeline import Hang, Hung, Timeline
from replay.trainers import Diffusers, SdScripts, Trainer, diffusers, hf_trainer, sd_scripts

HF_PATTERN = r"^\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)"
ISSUE = {"sample_every": 40, "sample_s": 240.0, "caching_s": 120.0, "save_s": 60.0}


@dataclass
class Scenario:
    name: str
    build: Callable[[Timeline], None]
    hang: Hang | None = None
    log: bool = True
    step_pattern: str | None = None
    note: str = ""
    tail: float = 2400.0                 # how long to watch after the hang
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.hang is None

    def timeline(self) -> Timeline:
        tl = Timeline(hang=self.hang)
        with contextlib.suppress(Hung):   # the run stops where it hangs
            self.build(tl)
        return tl


def _sd(**kw: object) -> Callable[[Timeline], None]:
    cfg = SdScripts(**kw)  # type: ignore[arg-type]
    return lambda tl: sd_scripts(tl, cfg)


def corpus() -> list[Scenario]:
    issue = _sd(**ISSUE)
    return [
        # ---------------------------------------------------------------- healthy
        Scenario("sd-scripts: issue 12's healthy run", issue,
                 note="2 s steps, 2 min caching, 4 min sampling per epoch, 1 min saves"),
        Scenario("sd-scripts: slow first step, sample at first", _sd(
            **ISSUE, first_step_s=240.0, sample_at_first=True),
            note="4 min warm-up step after a 4 min sampling before step 1"),
        Scenario("sd-scripts: 12 s steps, 8 min sampling, long caching", _sd(
            epochs=3, steps_per_epoch=20, step_s=12.0, caching_s=900.0, sample_every=20,
            sample_s=480.0, save_s=120.0), note="a 16 GB card, 15 min caching"),
        Scenario("sd-scripts: sampling with CPU prompt encoding", _sd(
            **{**ISSUE, "cpu_prompt_s": 300.0, "sample_s": 540.0}),
            note="GPU idle 5 min inside each 9 min sampling"),
        Scenario("sd-scripts: epoch validation, no saves", _sd(
            epochs=4, steps_per_epoch=40, validation_s=240.0, save_state=False,
            sample_every=None), note="4 min validation per epoch"),
        Scenario("sd-scripts: slow state saves", _sd(
            **{**ISSUE, "save_s": 420.0}), note="7 min saves (a large state)"),
        Scenario("sd-scripts: 14 min sampling (12 GB card)", _sd(
            epochs=3, steps_per_epoch=40, step_s=10.0, sample_every=40, sample_s=840.0),
            note="4 prompts at 3.5 min each, GPU busy"),
        Scenario("HF Trainer: 15 min evaluation", lambda tl: hf_trainer(
            tl, Trainer(max_steps=200, eval_s=900.0)), step_pattern=HF_PATTERN,
            note="a large eval set"),
        Scenario("diffusers: checkpoints and validation", lambda tl: diffusers(tl, Diffusers()),
                 note="2.5 s steps, 45 s saves, 3 min validation per epoch"),
        Scenario("HF Trainer: evaluation and saves", lambda tl: hf_trainer(tl, Trainer()),
                 step_pattern=HF_PATTERN, note="1.5 s steps, 3 min eval, 30 s saves"),
        Scenario("FluxGym web UI (no log)", issue, log=False,
                 note="no log file: GPU and process only"),
        # ---------------------------------------------------------------- hangs
        Scenario("sd-scripts: hang mid-epoch", issue, Hang("step", 60),
                 note="issue 12: stepping every ~2 s"),
        Scenario("sd-scripts: hang mid-epoch, GPU spinning", issue, Hang("step", 60, mode="spin")),
        Scenario("sd-scripts: hang at minute 5", _sd(**{**ISSUE, "caching_s": 60.0}),
                 Hang("step", 20), note="inside the 600 s start-up grace"),
        Scenario("sd-scripts: hang in the first step", issue, Hang("first_step", after=30.0)),
        Scenario("sd-scripts: hang in the first sampling", issue, Hang("sampling", 1, 60.0)),
        Scenario("sd-scripts: hang in a later sampling", issue, Hang("sampling", 3, 60.0)),
        Scenario("sd-scripts: hang while caching", issue, Hang("caching", after=30.0)),
        Scenario("sd-scripts: hang in a state save", issue, Hang("saving", 2, 5.0)),
        Scenario("sd-scripts: hang in validation", _sd(
            epochs=4, steps_per_epoch=40, validation_s=240.0, save_state=False),
            Hang("validation", 2, 30.0)),
        Scenario("diffusers: hang mid-training", lambda tl: diffusers(tl, Diffusers()),
                 Hang("step", 120)),
        Scenario("HF Trainer: hang in evaluation", lambda tl: hf_trainer(tl, Trainer()),
                 Hang("validation", 2, 40.0), step_pattern=HF_PATTERN),
        Scenario("FluxGym web UI (no log): hang mid-epoch", issue, Hang("step", 60), log=False),
    ]
