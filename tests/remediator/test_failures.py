"""The failure table, row by row, on the text the upstream code really prints.

Where the failure can happen here, the text is produced for real: Python is run and its
own traceback, argparse, importlib, faulthandler, subprocess, safetensors, torch
(weights_only, DataLoader, the CPU build's CUDA assertion, elastic's failure record) and
rich print it.  Where it needs what this machine lacks (a GPU, NCCL, a machine out of
shared memory) the text is built in the upstream format the row cites, and the test says
so.  Every row has a test (checked by test_every_row_is_tested).
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from remediator import failures
from remediator.failures import (
    CONFIGURATION,
    HEADER,
    PATTERNS,
    RESOURCES,
    RESUME,
    TAIL_BYTES,
    TRANSIENT,
    UNKNOWN,
    classify,
    classify_log,
    read_tail,
)
from trainguard.config import JobConfig

PY = sys.executable
BAR = "\rsteps:  {pct:>2}%|▍         | {n}/360 [00:{s:02d}<05:00, 1.20it/s, avr_loss=0.11]"
TESTED: set[str] = set()


def bar(*steps: int) -> str:
    """sd-scripts' steps bar as tqdm draws it: \\r redraws, no newline."""
    return "".join(BAR.format(pct=n * 100 // 360, n=n, s=n % 60) for n in steps)


def stderr_of(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What Python itself prints when ``code`` fails (stdout and stderr together)."""
    proc = subprocess.run([PY, *args, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def accelerate_wrapper(returncode: int) -> str:
    """The traceback accelerate's simple_launcher adds (commands/launch.py: raise
    subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)), rendered by
    CPython's own CalledProcessError.__str__."""
    err = subprocess.CalledProcessError(returncode, [PY, "sd-scripts/flux_train_network.py",
                                                     "--output_dir", "outputs/lora"])
    return ("Traceback (most recent call last):\n  File \"/env/bin/accelerate\", line 8, in "
            "<module>\n    sys.exit(main())\nsubprocess.CalledProcessError: " + str(err) + "\n")


def check(text: str, cls: str, cause: str | None, line_has: str) -> failures.Failure:
    f = classify(text)
    assert (f.cls, f.cause) == (cls, cause), (f, text[-2000:])
    assert line_has in f.line, f.line
    if cause is not None:
        TESTED.add(cause)
    return f


# ------------------------------------------------------------------- resume errors


def test_keyerror_step_from_the_seed_routes_to_the_repair_path() -> None:
    # Verbatim from the field report (seeds 001): accelerate 0.32's load_state.
    text = (bar(358, 359, 360) + "\n" + HEADER + "bash train-resumed.sh\n"
            "Traceback (most recent call last):\n"
            '  File "/workspace/fluxgym/env/lib/python3.10/site-packages/accelerate/'
            'accelerator.py", line 3156, in load_state\n'
            '    self.step = override_attributes["step"]\n'
            "KeyError: 'step'\n" + accelerate_wrapper(1))
    check(text, RESUME, "accelerate-rng-step", "KeyError: 'step'")
    # Another KeyError is not this row.
    assert classify(text.replace("KeyError: 'step'", "KeyError: 'steps'")).cause is None


def test_weights_only_refusal_is_a_resume_error(tmp_path: Path) -> None:
    """torch's own refusal of an RNG file holding numpy objects (torch >= 2.6 default)."""
    text = stderr_of(f"""
        import numpy as np, torch
        torch.save({{"numpy_random_seed": np.random.get_state()}}, {str(tmp_path / 'r.pkl')!r})
        torch.load({str(tmp_path / 'r.pkl')!r}, weights_only=True)
    """)
    check(text, RESUME, "torch-weights-only", "Weights only load failed.")


# ------------------------------------------------------------------- configuration


def test_module_not_found_at_start() -> None:
    text = stderr_of("import library.train_util")
    f = check(text + accelerate_wrapper(1), CONFIGURATION, "module-not-found",
              "ModuleNotFoundError: No module named 'library'")
    assert "install" in f.todo


def test_import_error_between_packages() -> None:
    text = stderr_of("from json import no_such_name")
    check(text, CONFIGURATION, "import-error", "cannot import name 'no_such_name'")


def test_missing_file() -> None:
    text = stderr_of("open('/workspace/fluxgym/models/unet/flux1-dev.sft', 'rb')")
    check(text + accelerate_wrapper(1), CONFIGURATION, "file-not-found",
          "flux1-dev.sft")


@pytest.mark.parametrize("argv", [["--max_train_steps", "many"], ["--bogus_flag", "1"], []])
def test_argparse_errors(argv: list[str]) -> None:
    text = stderr_of(f"""
        import argparse, sys
        p = argparse.ArgumentParser(prog="flux_train_network.py")
        p.add_argument("--output_dir", required=True)
        p.add_argument("--max_train_steps", type=int)
        p.parse_args(["--output_dir", "out"] + {argv!r} if {bool(argv)!r} else [])
    """)
    check(text, CONFIGURATION, "argument-error", "flux_train_network.py: error: ")


def test_sd_scripts_no_data_through_rich_at_80_columns() -> None:
    """train_network.py:575-579 logs it and returns: the process even exits 0.  Rendered
    by rich's RichHandler at 80 columns, as the sd-scripts simulator's log is, the
    message wraps after a few words."""
    from rich.console import Console
    from rich.logging import RichHandler

    buf = io.StringIO()
    handler = RichHandler(console=Console(file=buf, width=80))
    handler.setFormatter(logging.Formatter(fmt="%(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    lg = logging.Logger("train_network")
    lg.addHandler(handler)
    lg.handle(lg.makeRecord(
        "train_network", logging.ERROR, "/fluxgym/sd-scripts/train_network.py", 577,
        "No data found. Please verify arguments (train_data_dir must be the parent of "
        "folders with images) / 画像がありません。引数指定を確認してください"
        "（train_data_dirには画像があるフォルダではなく、画像があるフォルダの親フォルダを"
        "指定する必要があります）", (), None))
    assert len(buf.getvalue().splitlines()) > 3  # it did wrap
    check(buf.getvalue(), CONFIGURATION, "no-training-data", "No data found.")


def test_damaged_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "flux1-dev.sft"
    bad.write_bytes((1 << 40).to_bytes(8, "little") + b"{")
    text = stderr_of(f"import safetensors.torch as st; st.load_file({str(bad)!r})")
    check(text, CONFIGURATION, "safetensors-damaged", "Error while deserializing header")


def test_cpu_only_torch_asked_for_cuda() -> None:
    """This machine's torch is the CPU build: its own assertion is the real text."""
    text = stderr_of("import torch; torch.zeros(1).cuda()")
    check(text, CONFIGURATION, "no-cuda", "Torch not compiled with CUDA enabled")
    # c10's message for a CUDA build that sees no GPU (upstream text, no GPU here).
    check("RuntimeError: No CUDA GPUs are available\n", CONFIGURATION, "no-cuda",
          "No CUDA GPUs")


# ------------------------------------------------------------------- resources


def test_cuda_out_of_memory_in_the_upstream_format() -> None:
    """No GPU here: the message is built as c10/cuda/CUDACachingAllocator.cpp formats it
    (torch >= 2.1) and raised as torch.OutOfMemoryError, so the traceback's last line is
    what a real one shows."""
    text = stderr_of("""
        import torch
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "23.55 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process "
            "has 22.48 GiB memory in use. Of the allocated memory 21.80 GiB is allocated by "
            "PyTorch, and 254.39 MiB is reserved by PyTorch but unallocated.")
    """)
    assert "torch.OutOfMemoryError: CUDA out of memory." in text
    check(bar(41, 42) + text + bar(42) + accelerate_wrapper(1), RESOURCES,
          "cuda-out-of-memory", "Tried to allocate 2.00 GiB")
    # torch < 1.13 raised RuntimeError with the older wording.
    check("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB "
          "total capacity; 14.2 GiB already allocated)\n", RESOURCES, "cuda-out-of-memory",
          "RuntimeError")


def test_disk_full() -> None:
    """/dev/full answers every write with ENOSPC: the real OSError text."""
    text = stderr_of("f = open('/dev/full', 'w'); f.write('x'); f.flush()")
    check(text, RESOURCES, "disk-full", "No space left on device")


def test_dataloader_out_of_shared_memory_in_the_upstream_format() -> None:
    """torch/csrc/DataLoader.cpp's handler text (a bus error needs a full /dev/shm)."""
    check("ERROR: Unexpected bus error encountered in worker. This might be caused by "
          "insufficient shared memory (shm).\n" + accelerate_wrapper(1), RESOURCES,
          "shared-memory", "insufficient shared memory")


# ------------------------------------------------------------------- transient


def test_nccl_watchdog_timeout_in_the_upstream_format() -> None:
    """ProcessGroupNCCL.cpp's message (no NCCL here), as torch logs it before aborting."""
    text = (bar(100, 101) + "\n[rank1]:[E1124 02:12:33.123 ProcessGroupNCCL.cpp:632] [Rank 1] "
            "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1207, "
            "OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600048 "
            "milliseconds before timing out.\n")
    check(text, TRANSIENT, "nccl-timeout", "Watchdog caught collective operation timeout")


def test_nccl_error_in_the_upstream_format() -> None:
    check("torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
          "NCCLUtils.hpp:317, unhandled system error (run with NCCL_DEBUG=INFO for details), "
          "NCCL version 2.20.5\n", TRANSIENT, "nccl-error", "NCCL error in:")


def test_cuda_error_after_an_xid_in_the_upstream_format() -> None:
    check("RuntimeError: CUDA error: an illegal memory access was encountered\nCUDA kernel "
          "errors might be asynchronously reported at some other API call, so the "
          "stacktrace below might be incorrect.\n", TRANSIENT, "cuda-error",
          "illegal memory access")


def test_dataloader_worker_killed() -> None:
    """A real DataLoader whose worker is SIGKILLed (what the OOM killer does to it)."""
    text = stderr_of("""
        import os, signal, torch
        class D(torch.utils.data.Dataset):
            def __len__(self): return 4
            def __getitem__(self, i): os.kill(os.getpid(), signal.SIGKILL)
        for _ in torch.utils.data.DataLoader(D(), num_workers=1): pass
    """)
    assert "is killed by signal: Killed." in text
    check(text, TRANSIENT, "dataloader-worker", "DataLoader worker (pid")


def test_segfault_with_faulthandler() -> None:
    text = stderr_of("import ctypes; ctypes.string_at(0)", "-X", "faulthandler")
    check(text, TRANSIENT, "fatal-signal", "Fatal Python error: Segmentation fault")


def test_signals_as_accelerate_torchrun_and_bash_report_them(tmp_path: Path) -> None:
    # accelerate's simple_launcher: the child SIGKILLed (the OOM killer), for real.
    text = stderr_of("""
        import subprocess, sys
        subprocess.run([sys.executable, "-c",
                        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], check=True)
    """)
    f = check(bar(10, 11) + "\n" + text, TRANSIENT, "killed-by-signal",
              "died with <Signals.SIGKILL: 9>")
    assert "OOM killer" in f.what
    # torchrun (elastic): its own failure record for a child killed by a signal.
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    failure = ProcessFailure(local_rank=0, pid=4242, exitcode=-9, error_file="")
    check(f"  traceback : {failure.message}\n", TRANSIENT, "killed-by-signal",
          "Signal 9 (SIGKILL) received by PID 4242")
    # bash's own report of a killed foreground command, for real.
    script = tmp_path / "train.sh"
    script.write_text(f"{PY} -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'\n")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    check(proc.stderr, TRANSIENT, "killed-by-signal", "Killed")


def test_every_row_is_tested() -> None:
    """Runs last in this file (pytest keeps definition order)."""
    assert {p.cause for p in PATTERNS} == TESTED
    assert len({p.cause for p in PATTERNS}) == len(PATTERNS)
    for p in PATTERNS:
        assert p.what and p.todo and p.source, p.cause
        re.compile(p.regex)


# ------------------------------------------------------------------- the tail


def test_priority_root_cause_over_the_launcher() -> None:
    """accelerate re-raises every failure; its CalledProcessError names no cause."""
    f = classify("RuntimeError: simulated crash at step 3\n" + accelerate_wrapper(1))
    assert f.cls == UNKNOWN and "returned non-zero exit status 1" in f.line


def test_errors_before_the_last_progress_did_not_stop_the_run() -> None:
    """A start-up warning that printed a ModuleNotFoundError, then hours of training, then
    the OOM killer: the signal is the cause, not the warning."""
    text = ("Traceback (most recent call last):\nModuleNotFoundError: No module named "
            "'triton'\n" + bar(1, 2, 3, 200) + "\n")
    assert classify(text).cls == UNKNOWN      # nothing after the progress
    f = classify(text + accelerate_wrapper(-9))
    assert (f.cls, f.cause) == (TRANSIENT, "killed-by-signal")


def test_the_bar_redrawn_after_the_traceback_does_not_hide_it(tmp_path: Path) -> None:
    """tqdm redraws the bar at exit, after Python printed the traceback: the step did not
    change there, so the traceback still counts (real trainer output)."""
    text = bar(40, 41, 42) + stderr_of("import library") + bar(42) + accelerate_wrapper(1)
    assert classify(text).cause == "module-not-found"


def test_a_run_trainguard_started_is_judged_on_its_own_output() -> None:
    old = bar(1, 2) + stderr_of("import library")
    new = "\n" + HEADER + "bash /r/outputs/lora/train-resumed.sh in /r at 2026-11-24\n" + bar(3)
    assert classify(old).cause == "module-not-found"
    assert classify(old + new).cls == UNKNOWN


def test_a_custom_step_pattern_marks_progress() -> None:
    text = "ModuleNotFoundError: No module named 'x'\n{'loss': 0.1, 'step': 7}\n"
    assert classify(text).cause == "module-not-found"
    assert classify(text, r"'step': (?P<step>\d+)").cls == UNKNOWN


def test_only_the_tail_is_read_from_a_big_log(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        f.write(stderr_of("import library"))           # far away: not read
        for n in range(1, 200_000):
            f.write(BAR.format(pct=0, n=n % 360, s=0))
        f.write("\n" + stderr_of("open('/nope/model.sft')"))
    assert log.stat().st_size > 20 * TAIL_BYTES
    text, mtime = read_tail(log) or ("", 0.0)
    assert len(text.encode()) <= TAIL_BYTES and mtime == log.stat().st_mtime
    job = JobConfig(name="lora", output_dir=tmp_path, log_file=log)
    f = classify_log(job)
    assert f is not None and f.cause == "file-not-found" and f.log == str(log)
    assert classify_log(JobConfig(name="x", output_dir=tmp_path / "nope")) is None


def test_colour_escapes_and_long_lines() -> None:
    f = classify("\x1b[31mModuleNotFoundError: No module named 'x'\x1b[0m" + " " * 10 + "\n")
    assert f.cause == "module-not-found" and not f.line.endswith(" ")
    long = "RuntimeError: CUDA error: unknown error " + "x" * 1000
    f = classify(long)
    assert f.cause == "cuda-error" and len(f.line) <= failures.MAX_LINE


def test_an_empty_or_missing_log(tmp_path: Path) -> None:
    assert classify("").cls == UNKNOWN and classify("").line == ""
    (tmp_path / "trainguard-resume.log").write_text("")
    f = classify_log(JobConfig(name="x", output_dir=tmp_path))
    assert f is not None and f.cls == UNKNOWN
    os.chmod(tmp_path / "trainguard-resume.log", 0)
    if os.geteuid() != 0:  # root reads anything
        assert classify_log(JobConfig(name="x", output_dir=tmp_path)) is None
