"""The environment a resumed run gets: the one the run itself had, never the remediator's.

Why: trainguard usually lives in its own venv, FluxGym in another.  A resume started with
the remediator's environment found the remediator's ``accelerate`` first on PATH and died
with ``ModuleNotFoundError``.  So the resumed run gets the environment its training root
was started with (PATH, VIRTUAL_ENV, CONDA_PREFIX, CUDA_VISIBLE_DEVICES, HF_HOME... all of
it), read from ``/proc/PID/environ`` while the run is still there.  The pipeline keeps it
in the store (the job's last known environment), so a run that already died is resumed
in its own environment too: the remediator samples each job's live root now and then, and
records the environment of every run it launches.  ``launch.env`` overrides it, then the
compatibility fixes for the checkpoint.

Only when the run's environment was never seen (the run died before trainguard ever saw
it) does the remediator fall back to its own environment, unchanged (trainguard is often
installed into the training venv itself, as the README suggests, so taking its venv out
of PATH would hide the run's own tools); the log and the incident say so.

Which python that environment runs (for the compatibility verdict): the one the training
command would find.  For ``accelerate``/``torchrun`` that is the interpreter in the
launcher's ``#!`` line, looked up on the environment's PATH; for ``python...`` the
interpreter itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainguard.script import launcher_index, program

# Values of these are kept out of logs and the API (the environment itself is stored in
# the 0600 state file and passed to the resumed run unchanged).
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH")


@dataclass(frozen=True)
class RunEnv:
    """An environment for the resumed run and where it came from (for the log)."""

    env: Mapping[str, str]
    source: str


def fallback() -> RunEnv:
    return RunEnv(dict(os.environ), "the remediator's own environment (the run's own "
                                    "environment was never seen: it died before the "
                                    "remediator could read it)")


def redacted(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the values of secret-looking variables replaced, for logs and the API."""
    return {k: ("<redacted>" if any(m in k.upper() for m in _SECRET_MARKERS) else v)
            for k, v in env.items()}


def _interpreter_of(launcher: str, path_var: str) -> str | None:
    try:
        with open(launcher, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[-1], path=path_var)
    return parts[0] if os.path.exists(parts[0]) else None


def find_python(words: Sequence[str], env: Mapping[str, str], cwd: str) -> str | None:
    """The interpreter the training command ``words`` runs under ``env``, or None."""
    i = launcher_index(words)
    if i is None:
        return None
    prog = words[i]
    path_var = env.get("PATH", "")
    if os.path.isabs(prog) or os.sep in prog:
        found: str | None = os.path.join(cwd, prog) if not os.path.isabs(prog) else prog
        if found is not None and not os.path.exists(found):
            found = None
    else:
        found = shutil.which(prog, path=path_var)
    if found is None:
        return None
    if program(found).startswith("python"):
        return found
    return _interpreter_of(found, path_var)
