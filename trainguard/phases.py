"""What a known trainer is doing, read from the lines it logs on time.

Only logger records (:class:`trainguard.logparse.Record`) and bars date a phase: both
reach the log at once.  ``print()`` output never does, because it is block-buffered and
arrives late (see :mod:`trainguard.logparse`): sd-scripts' LoRA trainer announces its
weights save (``saving checkpoint:``) and each epoch (``epoch N/M``) with ``print`` only,
so those are not phases here; a save of state (``--save_state``) is, through its logger
lines, and the doctor sees the state folder being written in any case.

Phases and the lines that start them (kohya-ss/sd-scripts, sd3 branch, commit 48d368fa;
huggingface/diffusers ``examples/dreambooth/train_dreambooth_lora_flux.py``; accelerate
``Accelerator.save_state``; transformers ``trainer.py``):

========== ===================================================================================
startup    ``preparing accelerator`` (train_network.py:593, before the models load),
           ``resume training from local state`` (library/train_util.py:4777, loading a state),
           ``***** Running training *****`` (diffusers examples, HF Trainer at INFO)
caching    ``caching latents`` / ``... with caching strategy.`` (train_util.py:1120-1293),
           ``caching Text Encoder outputs...`` and variants, ``checking cache validity...`` /
           ``existence...`` (train_util.py:1306-1450); the diffusers ``Caching latents`` bar
training   the run's step bar is drawn, or its step advances
sampling   ``generating sample images at step / サンプル画像生成 ステップ: N``
           (train_util.py:6394, flux_train_utils.py:61); diffusers ``Running validation...``
           (it renders sample images: the same work under another name)
saving     ``saving state at epoch N`` / ``at step N`` / ``saving last state.``
           (train_util.py:5942, 5964, 5990), ``save train state to`` (train_network.py:946,
           the state hook), ``saving checkpoint:`` / ``saving model:`` as logger records
           (train_util.py:5889, 5914: the fine-tuning scripts), accelerate's ``Saving current
           state to``, the Trainer's ``Saving model checkpoint to``
validation sd-scripts' ``validation steps`` / ``epoch validation steps`` bars
           (train_network.py:1542, 1618), or any bar nested under the training bar while
           training (the HF Trainer's evaluation bar)
finished   ``model saved.`` (train_network.py:1729, the last thing a successful run logs)
========== ===================================================================================
"""

from __future__ import annotations

import re

STARTUP = "startup"
CACHING = "caching"
TRAINING = "training"
SAMPLING = "sampling"
SAVING = "saving"
VALIDATION = "validation"
FINISHED = "finished"
PHASES = (STARTUP, CACHING, TRAINING, SAMPLING, SAVING, VALIDATION, FINISHED)

_I = re.IGNORECASE
# (pattern on a logger record's message, the phase it starts)
RECORD_PHASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bpreparing accelerator\b"), STARTUP),
    (re.compile(r"\bresume training from (?:local|huggingface) state\b"), STARTUP),
    (re.compile(r"\*{5} Running training \*{5}"), STARTUP),
    (re.compile(r"\bcaching latents\b", _I), CACHING),
    (re.compile(r"\bcaching text encoder outputs\b", _I), CACHING),
    (re.compile(r"\bchecking cache (?:validity|existence)\b"), CACHING),
    (re.compile(r"\bgenerating sample images at step\b"), SAMPLING),
    (re.compile(r"\bRunning validation\.\.\."), SAMPLING),
    (re.compile(r"\bsaving state at (?:epoch|step) \d|\bsaving last state\b"
                r"|\bsave train state to\b|^saving checkpoint: |^saving model: "), SAVING),
    (re.compile(r"\bSaving current state to\b|\bSaving model checkpoint to\b"), SAVING),
)

# A new run begins (the log is shared by a run and its resumes).  Logger records, plus
# sd-scripts' print() banner: late, but tqdm flushes stdout when it creates the run's
# step bar, so the banner always precedes that bar (a no-op when a record opened the run).
START_RE = re.compile(r"\bpreparing accelerator\b|\bresume training from local state\b"
                      r"|\*{5} Running training \*{5}|^running training\b")
COMPLETED_RE = re.compile(r"(?:^|\s)model saved\.(?:\s|$)")

# Where an sd-scripts resume really starts (see LogFollower's docstring), matched on the
# record with every blank removed (logparse.compact): rich folds paths mid-word.
#   train_network.py:969   load train state from {dir}/train_state.json: {data}
#   train_network.py:946   save train state to {dir}/train_state.json at epoch E step S
#   train_network.py:1265  skipping {N} steps / {N}ステップをスキップします
LOAD_STATE_RE = re.compile(
    r"loadtrainstatefrom(?P<dir>.*?)[\\/]?train_state\.json:\{(?P<data>[^}]*)\}")
SAVE_STATE_RE = re.compile(
    r"savetrainstateto(?P<dir>.*?)[\\/]?train_state\.jsonatepoch(?P<epoch>\d+)step\d+")
SKIP_STEPS_RE = re.compile(r"^skipping(?P<n>\d+)steps/")
STATE_STEP_RE = re.compile(r"['\"]current_step['\"]:(?P<n>\d+)")


def record_phase(message: str) -> str | None:
    """The phase a logger record starts, if any."""
    for pattern, phase in RECORD_PHASES:
        if pattern.search(message):
            return phase
    return None


def bar_phase(desc: str, nested: bool, current: str | None) -> str | None:
    """The phase a bar other than the step bar starts, if any."""
    lowered = desc.lower()
    if "validation" in lowered:
        return VALIDATION
    if "caching" in lowered:
        return CACHING
    if nested and current == TRAINING:
        return VALIDATION   # a bar under the training bar while training: evaluation
    return None
