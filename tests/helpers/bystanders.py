"""The user's own processes that name a run's folder: real processes, exact argument lists.

Issue 10's field test: one remediation signalled every one of these.  Each is a real
process whose ``/proc/PID/cmdline`` is exactly what the user's tool shows (``rsync -a
outputs/a/ backup/``...).  The program behind most of them is a 3-line C ``pause()``
loop compiled here with gcc (the tests already need gcc for the fake NVML), started with
``Popen(argv, executable=pause)`` so that argv[0] is the tool's name; ``python -m
http.server`` is the real server.  Only the arguments matter to the job rule, so a real
rsync copying for minutes and this process are the same to it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_PAUSE_C = "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n"


def pause_binary() -> Path:
    """Build (once per source) a program that sleeps until a signal, whatever its argv."""
    digest = hashlib.sha256(_PAUSE_C.encode()).hexdigest()[:12]
    dest = Path(tempfile.gettempdir()) / f"trainguard-pause-{os.getuid()}-{digest}"
    if not dest.exists():
        src = dest.with_suffix(".c")
        src.write_text(_PAUSE_C)
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-O2", "-o", str(tmp), str(src)], check=True,
                       capture_output=True)
        os.replace(tmp, dest)
    return dest


def bystander_argvs(out: str, venv_bin: str) -> dict[str, list[str]]:
    """Issue 10's bystanders of a run whose folder is ``out`` (as the user typed it)."""
    py = str(Path(venv_bin) / "python3")
    return {
        "rsync": ["rsync", "-a", f"{out}/", "backup/"],
        "cp": ["cp", "-r", out, "backup"],
        "less": ["less", f"{out}/model.safetensors"],
        "vi": ["vi", f"{out}/train.sh"],
        "tail": ["tail", "-f", f"{out}/train.log"],
        "tensorboard": [py, str(Path(venv_bin) / "tensorboard"), "--logdir", out],
        "watch": ["watch", "ls", out],
        "exporter": [py, str(Path(venv_bin) / "trainguard"), "exporter", "--config",
                     f"{out}/trainguard.yaml"],
    }


def start_bystanders(out: str, cwd: Path, venv_bin: str | None = None
                     ) -> dict[str, subprocess.Popen[bytes]]:
    """Start every bystander (and a real ``python -m http.server`` on the folder) in
    its own session, from ``cwd``; the caller kills them."""
    pause = str(pause_binary())
    vb = venv_bin or str(Path(sys.executable).parent)
    procs = {name: subprocess.Popen(argv, executable=pause, cwd=cwd, start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
             for name, argv in bystander_argvs(out, vb).items()}
    procs["http.server"] = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory", out],
        cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return procs
