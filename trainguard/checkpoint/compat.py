"""Will ``Accelerator.load_state`` in a given environment restore this checkpoint?

(A Hugging Face Trainer checkpoint is restored by transformers from its own files; for
those only the presence of torch and accelerate is checked.)

The environment that resumes (FluxGym's venv, say) is often not the one trainguard runs
in, so versions are read without importing anything heavy: ``importlib.metadata`` here,
or ``python -c`` with the same in the resuming interpreter.

The matrix, and what backs each boundary:

* torch >= 2.6 made ``weights_only=True`` the ``torch.load`` default (PyTorch 2.6 release
  notes; torch's own UnpicklingError text says "In PyTorch 2.6, we changed the default").
  accelerate < 1.1 loads the RNG file with that default and no allowlist for numpy, so
  the load fails inside accelerate's ``try: ... except Exception: "Could not load random
  states"``.  accelerate 0.32.0-0.33.0 then reads ``override_attributes["step"]``
  unconditionally: ``KeyError: 'step'`` (seeds 000 and 002; DESIGN.md §4).  accelerate
  >= 0.34 guards that read (``if "step" in override_attributes``) and silently keeps
  step 0 and unrestored RNG.  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` flips the default
  back, which rescues exactly these versions (DESIGN.md §4).
* accelerate >= 1.1 passes ``weights_only=True`` itself plus ``TORCH_SAFE_GLOBALS``
  (accelerate/utils/other.py ``load``): ``np_core.multiarray._reconstruct`` for the
  numpy it runs under, ndarray, dtype, ``_codecs.encode`` and, only from numpy 1.25
  (``is_numpy_available("1.25.0")``), ``np.dtypes.UInt32DType``.  So numpy < 1.25 fails,
  and a file naming ``numpy.core`` fails under numpy >= 2.1 (DESIGN.md §4; verified here
  with numpy 2.4 / accelerate 1.15 / torch 2.13 in tests/checkpoint/test_repair.py).  The
  env variable does not help: the explicit ``weights_only=True`` wins over it.
* A file naming ``numpy._core`` cannot be unpickled at all under numpy < 2.0 (the module
  does not exist there), whatever accelerate does.
* Below torch 2.4 accelerate's ``load`` drops ``weights_only`` (``is_weights_only_available``)
  and torch < 2.6 defaults to full unpickling: everything loads.
* accelerate's RNG ``step`` plays no part: it is restored as saved (``load_state`` sets
  ``self.step`` from the file, accelerator.py ``load_state``), and 0 is what every
  sd-scripts epoch-end state holds (see doctor.py).  The seed's ``KeyError: 'step'`` is
  the first case above, fixed by the environment variable, not by rewriting the file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from trainguard.checkpoint.model import CheckpointInfo, Status

ENV_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
REPAIR_NUMPY = "rewrite-rng-numpy"

_VERSION_SCRIPT = (
    "import json, importlib.metadata as m\n"
    "def v(n):\n"
    "    try: return m.version(n)\n"
    "    except m.PackageNotFoundError: return None\n"
    "print(json.dumps({n: v(n) for n in ('torch', 'accelerate', 'numpy')}))\n"
)


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) from '2.6.0+cu124', '1.1.0.dev0', '2.0'; None if unknown."""
    if not text:
        return None
    m = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m[1]), int(m[2] or 0), int(m[3] or 0)


VERSIONS_TTL_SECONDS = 60.0
_VERSIONS: dict[tuple[str, int, int], tuple[Environment, float]] = {}
_VERSIONS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Environment:
    """Versions of the interpreter that will resume (None: not installed / unknown)."""

    torch: str | None
    accelerate: str | None
    numpy: str | None

    @classmethod
    def current(cls) -> Environment:
        """This interpreter, via importlib.metadata (torch is never imported)."""
        def v(name: str) -> str | None:
            try:
                return version(name)
            except PackageNotFoundError:
                return None
        return cls(torch=v("torch"), accelerate=v("accelerate"), numpy=v("numpy"))

    @classmethod
    def of_python(cls, executable: str, timeout: float = 60.0) -> Environment:
        """Another interpreter's versions; ValueError with a readable reason on failure.

        Asked again within :data:`VERSIONS_TTL_SECONDS` for the same interpreter file, the
        answer is the one it gave: starting it costs ~50 ms of CPU (more with a big
        site-packages), and a burst of alerts would start it once per incident on the
        cores the webhook needs (bench/bench_webhook.py).  A pip install in that minute is
        seen at the next ask after it.
        """
        try:
            st = os.stat(executable)
            key = (os.path.realpath(executable), st.st_ino, st.st_mtime_ns)
        except OSError:
            key = None
        now = time.monotonic()
        with _VERSIONS_LOCK:
            hit = _VERSIONS.get(key) if key is not None else None
        if hit is not None and now - hit[1] < VERSIONS_TTL_SECONDS:
            return hit[0]
        env = cls._ask(executable, timeout)
        if key is not None:
            with _VERSIONS_LOCK:
                _VERSIONS[key] = (env, now)
        return env

    @classmethod
    def _ask(cls, executable: str, timeout: float) -> Environment:
        try:
            proc = subprocess.run([executable, "-I", "-c", _VERSION_SCRIPT], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ValueError(f"cannot run {executable}: {exc}") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(f"{executable} failed to report versions: {last}")
        try:
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            return cls(torch=data["torch"], accelerate=data["accelerate"], numpy=data["numpy"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"{executable} printed something unexpected") from None

    def numpy_module(self) -> str | None:
        """How this environment's numpy (and accelerate's allowlist) names its core."""
        np = parse_version(self.numpy)
        if np is None:
            return None
        return "numpy._core" if np >= (2, 0, 0) else "numpy.core"


@dataclass(frozen=True)
class Verdict:
    """Whether load_state restores the checkpoint fully, and what would make it."""

    loads: bool
    problems: tuple[str, ...] = ()
    env_fixes: Mapping[str, str] = field(default_factory=dict)
    repairs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"loads": self.loads, "problems": list(self.problems),
                "env_fixes": dict(self.env_fixes), "repairs": list(self.repairs)}


def verdict(info: CheckpointInfo, env: Environment) -> Verdict:
    """Say whether ``env``'s accelerate restores ``info`` (weights, RNG and step)."""
    if info.status in (Status.INVALID, Status.WRITING):
        return Verdict(False, (f"checkpoint is {info.status.value}",))
    torch_v, acc_v, np_v = (parse_version(env.torch), parse_version(env.accelerate),
                            parse_version(env.numpy))
    if torch_v is None or acc_v is None:
        missing = " and ".join(n for n, v in (("torch", torch_v), ("accelerate", acc_v))
                               if v is None)
        return Verdict(False, (f"{missing} not installed in the resuming environment",))
    if info.layout == "trainer":
        # transformers' Trainer restores its own rng_state.pth, not accelerate's RNG
        # pickle: none of the matrix below applies, and nothing here can repair it.
        return Verdict(True)
    problems: list[str] = []
    env_fixes: dict[str, str] = {}
    repairs: list[str] = []
    loads = True
    file_np = info.numpy_module
    if file_np == "numpy._core" and np_v is not None and np_v < (2, 0, 0):
        loads = False
        problems.append(f"RNG file names numpy._core (numpy 2 writer) but numpy {env.numpy} "
                        "has no such module")
        repairs.append(REPAIR_NUMPY)
    elif torch_v >= (2, 6, 0) and acc_v < (1, 1, 0):
        loads = False
        what = ("load_state raises KeyError: 'step'" if (0, 32, 0) <= acc_v < (0, 34, 0)
                else "load_state silently keeps step 0 and does not restore the RNG")
        problems.append(f"torch {env.torch} loads with weights_only=True and accelerate "
                        f"{env.accelerate} has no numpy allowlist: {what}")
        env_fixes[ENV_NO_WEIGHTS_ONLY] = "1"
    elif torch_v >= (2, 4, 0) and acc_v >= (1, 1, 0):
        if np_v is not None and np_v < (1, 25, 0):
            loads = False
            problems.append(f"accelerate {env.accelerate}'s RNG allowlist needs numpy >= 1.25, "
                            f"found {env.numpy}")
        elif file_np == "numpy.core" and np_v is not None and np_v >= (2, 1, 0):
            loads = False
            problems.append(f"RNG file names numpy.core (numpy 1.x writer); accelerate "
                            f"{env.accelerate} under numpy {env.numpy} only allows numpy._core")
            repairs.append(REPAIR_NUMPY)
    return Verdict(loads, tuple(problems), env_fixes, tuple(dict.fromkeys(repairs)))
