"""The order in which each known trainer does its work and what it logs meanwhile.

Each builder walks one run through a :class:`~replay.timeline.Timeline`, citing the
upstream code whose order it follows; a :class:`~replay.timeline.Hang` stops it anywhere.

* sd-scripts ``train_network.py`` (sd3 branch, 48d368fa) as FluxGym runs it: ``preparing
  accelerator`` (593), models load, latents and text-encoder outputs cached (620-650),
  ``running training`` banner (987, a print), ``--sample_at_first`` (1332), the steps bar
  (1357); per step the bar, then sampling when ``global_step % sample_every_n_steps == 0``
  (1491), step validation (1530-1600); per epoch end validation (1610-1670), the LoRA
  weights (print, 1300), ``--save_state`` (train_util.py:5942, the hook's line at 946), and
  ``model saved.`` (1729) after the last state.
* diffusers ``examples/dreambooth/train_dreambooth_lora_flux.py``: ``Caching latents`` bar,
  ``***** Running training *****``, the ``Steps`` bar, ``accelerator.save_state`` every
  ``checkpointing_steps`` (accelerate logs ``Saving current state to``), ``Running
  validation...`` every ``validation_epochs``.
* transformers ``Trainer`` with its ``ProgressCallback``: a bar without description, an
  evaluation bar nested under it (``leave=False``) every ``eval_steps``, checkpoint saves
  with nothing logged at the default verbosity.
"""

from __future__ import annotations

from dataclasses import dataclass

from replay.timeline import Timeline

STATE = "/workspace/fluxgym/outputs/my-lora/my-lora-{:06d}-state"


@dataclass
class SdScripts:
    epochs: int = 4
    steps_per_epoch: int = 40
    step_s: float = 2.0
    load_s: float = 90.0
    caching_s: float = 120.0
    first_step_s: float | None = None    # the warm-up step, when slower than the others
    sample_every: int | None = None      # --sample_every_n_steps
    sample_at_first: bool = False
    sample_s: float = 240.0
    cpu_prompt_s: float = 0.0            # prompt encoding on the CPU, GPU idle, per sampling
    save_state: bool = True
    save_s: float = 60.0
    validation_s: float | None = None    # an epoch-end validation of this length
    weights_s: float = 2.0               # the LoRA weights save (a print only)


def sd_scripts(tl: Timeline, c: SdScripts) -> None:
    tl.start_process()
    tl.activity("cpu")
    tl.wait(20.0)                                    # imports, argument checks
    tl.log(lambda u: u.rich("preparing accelerator", "preparing accelerator"))
    if (h := tl.point("loading")) is not None:
        tl.stop(h)
    tl.wait(c.load_s)
    tl.log(lambda u: u.rich("caching latents...", "caching latents"))
    tl.activity("cache")
    if (h := tl.point("caching")) is not None:
        tl.stop(h)
    tl.wait(c.caching_s / 2)
    tl.log(lambda u: u.rich("caching Text Encoder outputs...", "caching te"))
    tl.wait(c.caching_s / 2)
    tl.activity("cpu")
    tl.log(lambda u: u.print("running training / 学習開始"))
    tl.wait(15.0)                                    # network, optimizer, accelerator.prepare
    if c.sample_at_first:
        _sample(tl, c, 0)
    total = c.epochs * c.steps_per_epoch
    bar: dict[str, object] = {}
    tl.log(lambda u: bar.__setitem__("b", u.bar(total)))
    tl.activity("train")
    step = 0
    for epoch in range(1, c.epochs + 1):
        tl.log(lambda u, e=epoch: u.print(f"\nepoch {e}/{c.epochs}\n"))
        for _ in range(c.steps_per_epoch):
            step += 1
            first = step == 1
            if (h := tl.point("first_step" if first else "step", step)) is not None:
                tl.stop(h)
            tl.wait(c.first_step_s if first and c.first_step_s else c.step_s)
            tl.log(lambda u: u.steps(bar["b"]))
            if c.sample_every and step % c.sample_every == 0:
                _sample(tl, c, step)
                tl.activity("train")
        if c.validation_s:
            _validation(tl, c.validation_s)
            tl.activity("train")
        tl.activity("save")
        tl.log(lambda u, e=epoch: u.print(
            f"\nsaving checkpoint: /workspace/fluxgym/outputs/my-lora/my-lora-{e:06d}.safetensors"))
        tl.wait(c.weights_s)
        if c.save_state:
            tl.log(lambda u: u.rich("", "saving state epoch"))
            tl.log(lambda u, e=epoch: u.rich(f"saving state at epoch {e}", "saving state epoch"))
            tl.log(lambda u, e=epoch, s=step: u.rich(
                f"save train state to {STATE.format(e)}/train_state.json at epoch {e} step {s}",
                "save train state"))
            tl.save(c.save_s, tl.point("saving"))
        tl.activity("train")
    if c.save_state:
        tl.log(lambda u: u.rich("saving last state.", "saving last state"))
        tl.save(c.save_s, tl.point("saving"))
    tl.log(lambda u: u.print(
        "\nsaving checkpoint: /workspace/fluxgym/outputs/my-lora/my-lora.safetensors"))
    tl.wait(c.weights_s)
    tl.write_file("last.safetensors")   # {output_name}.safetensors; the replay's job has none
    tl.log(lambda u: u.rich("model saved.", "model saved"))
    tl.wait(2.0)
    tl.log(lambda u: u.exit())
    tl.end_process()


def _sample(tl: Timeline, c: SdScripts, step: int) -> None:
    """flux_train_utils.sample_images: a record, then per prompt records, a print and a
    nested denoising bar (20 steps)."""
    tl.log(lambda u: u.rich("", "sample"))
    tl.log(lambda u: u.rich(
        f"generating sample images at step / サンプル画像生成 ステップ: {step}", "sample"))
    hang = tl.point("sampling")
    tl.activity("cpu")
    if hang is not None and hang < c.cpu_prompt_s:
        tl.stop(hang)
    tl.wait(c.cpu_prompt_s)
    tl.activity("sample")
    if hang is not None:
        tl.stop(hang - c.cpu_prompt_s)
    prompts = 4
    per = (c.sample_s - c.cpu_prompt_s) / prompts
    for i in range(prompts):
        tl.log(lambda u, i=i: u.rich(f"prompt: photo of sks dog, pose {i}", "prompt"))
        tl.log(lambda u, i=i: u.print(f"Encoding prompt: photo of sks dog, pose {i}"))
        den: dict[str, object] = {}
        tl.log(lambda u, d=den: d.__setitem__("b", u.bar(20, desc=None)))
        for _ in range(4):
            tl.wait(per / 4)
            tl.log(lambda u, d=den: d["b"].update(5))  # type: ignore[attr-defined]
        tl.log(lambda u, d=den: d["b"].close())  # type: ignore[attr-defined]


def _validation(tl: Timeline, seconds: float) -> None:
    """train_network.py:1618: an ``epoch validation steps`` bar nested under the steps bar."""
    hang = tl.point("validation")
    val: dict[str, object] = {}
    tl.log(lambda u: val.__setitem__("b", u.bar(16, desc="epoch validation steps")))
    if hang is not None:
        tl.stop(hang)
    for _ in range(16):
        tl.wait(seconds / 16)
        tl.log(lambda u: val["b"].update(1))  # type: ignore[attr-defined]


@dataclass
class Diffusers:
    epochs: int = 4
    steps_per_epoch: int = 50
    step_s: float = 2.5
    load_s: float = 120.0
    caching_s: float = 90.0
    checkpointing_steps: int = 50
    save_s: float = 45.0
    validation_s: float = 180.0           # Running validation... every epoch


def diffusers(tl: Timeline, c: Diffusers) -> None:
    tl.start_process()
    tl.activity("cpu")
    if (h := tl.point("loading")) is not None:
        tl.stop(h)
    tl.wait(c.load_s)
    tl.activity("cache")
    cache: dict[str, object] = {}
    tl.log(lambda u: cache.__setitem__("b", u.bar(c.steps_per_epoch, desc="Caching latents")))
    if (h := tl.point("caching")) is not None:
        tl.stop(h)
    for _ in range(5):
        tl.wait(c.caching_s / 5)
        tl.log(lambda u: cache["b"].update(c.steps_per_epoch // 5))  # type: ignore[attr-defined]
    tl.log(lambda u: cache["b"].close())  # type: ignore[attr-defined]
    tl.activity("cpu")
    tl.wait(10.0)
    tl.log(lambda u: u.logging_line("***** Running training *****"))
    tl.log(lambda u: u.logging_line(f"  Total optimization steps = {c.epochs * c.steps_per_epoch}"))
    tl.wait(5.0)
    bar: dict[str, object] = {}
    tl.log(lambda u: bar.__setitem__("b", u.bar(c.epochs * c.steps_per_epoch, desc="Steps")))
    tl.activity("train")
    step = 0
    for _epoch in range(c.epochs):
        for _ in range(c.steps_per_epoch):
            step += 1
            if (h := tl.point("first_step" if step == 1 else "step", step)) is not None:
                tl.stop(h)
            tl.wait(c.step_s)
            tl.log(lambda u: u.steps(bar["b"]))
            if step % c.checkpointing_steps == 0:
                tl.log(lambda u, s=step: u.logging_line(
                    f"Saving current state to out/checkpoint-{s}", "accelerate.accelerator"))
                tl.save(c.save_s, tl.point("saving"))
                tl.log(lambda u, s=step: u.logging_line(f"Saved state to out/checkpoint-{s}"))
                tl.activity("train")
        tl.log(lambda u: u.logging_line(
            "Running validation... \n Generating 4 images with prompt: a photo of sks dog."))
        tl.activity("sample")
        if (h := tl.point("sampling")) is not None:
            tl.stop(h)
        tl.wait(c.validation_s)
        tl.activity("train")
    tl.activity("save")
    tl.wait(5.0)
    tl.log(lambda u: u.exit())
    tl.end_process()


@dataclass
class Trainer:
    max_steps: int = 300
    step_s: float = 1.5
    load_s: float = 60.0
    eval_steps: int = 100
    eval_s: float = 180.0
    save_steps: int = 100
    save_s: float = 30.0


def hf_trainer(tl: Timeline, c: Trainer) -> None:
    tl.start_process()
    tl.activity("cpu")
    if (h := tl.point("loading")) is not None:
        tl.stop(h)
    tl.wait(c.load_s)
    bar: dict[str, object] = {}
    tl.log(lambda u: bar.__setitem__("b", u.bar(c.max_steps, desc=None)))
    tl.activity("train")
    for step in range(1, c.max_steps + 1):
        if (h := tl.point("first_step" if step == 1 else "step", step)) is not None:
            tl.stop(h)
        tl.wait(c.step_s)
        tl.log(lambda u: bar["b"].update(1))  # type: ignore[attr-defined]
        if step % c.eval_steps == 0:
            ev: dict[str, object] = {}
            tl.log(lambda u, e=ev: e.__setitem__("b", u.bar(20, desc=None, leave=False)))
            hang = tl.point("validation")
            if hang is not None:
                tl.stop(hang)
            for _ in range(20):
                tl.wait(c.eval_s / 20)
                tl.log(lambda u, e=ev: e["b"].update(1))  # type: ignore[attr-defined]
            tl.log(lambda u, e=ev: e["b"].close())  # type: ignore[attr-defined]
            tl.log(lambda u: u.print("{'eval_loss': 0.5, 'epoch': 1.0}"))
        if step % c.save_steps == 0:
            tl.save(c.save_s, tl.point("saving"))
            tl.activity("train")
    tl.log(lambda u: bar["b"].close())  # type: ignore[attr-defined]
    tl.wait(3.0)
    tl.log(lambda u: u.exit())
    tl.end_process()
