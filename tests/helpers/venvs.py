"""Real virtual environments for the tests that need two of them.

Why: a FluxGym user runs training in FluxGym's venv and trainguard in its own.  The tests
build such environments for real (``python -m venv``), but without downloading torch
again: a venv's ``site-packages`` gets a ``.pth`` line (for the training venv) or links
(for trainguard's) to the packages already in the test venv.  What each interpreter can
import is then exactly what the test says, and that is all the remediator can see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

SITE = Path(sysconfig.get_paths()["purelib"])
# What trainguard's own venv lacks when installed without the [torch] extra.
_TORCH_STACK = ("torch", "functorch", "torchgen", "accelerate", "transformers", "triton",
                "nvidia", "tokenizers", "huggingface_hub")


def _venv(path: Path) -> Path:
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip",
                    str(path)], check=True, capture_output=True)
    return Path(next((path / "lib").glob("python3*")), "site-packages")


def _console_script(bin_dir: Path, name: str, python: str, module: str, func: str) -> Path:
    """A console script as pip writes it: ``#!python`` then import and call."""
    script = bin_dir / name
    script.write_text(f"#!{python}\nimport sys\nfrom {module} import {func}\n"
                      f"sys.exit({func}())\n")
    script.chmod(0o755)
    return script


def training_venv(path: Path) -> Path:
    """A venv with torch and accelerate (the test venv's, through a .pth) and its own
    ``bin/accelerate``: FluxGym's environment.  Returns its bin folder."""
    site = _venv(path)
    (site / "test-venv-packages.pth").write_text(str(SITE) + "\n")
    bin_dir = path / "bin"
    _console_script(bin_dir, "accelerate", str(bin_dir / "python"),
                    "accelerate.commands.accelerate_cli", "main")
    return bin_dir


def broken_accelerate_bin(path: Path) -> Path:
    """A bin folder whose ``accelerate`` runs under an interpreter without accelerate: what
    a remediator venv's PATH puts first.  Run from there, training dies with
    ``ModuleNotFoundError: No module named 'accelerate'``."""
    path.mkdir(parents=True, exist_ok=True)
    _console_script(path, "accelerate", sys.base_prefix + "/bin/python3",
                    "accelerate.commands.accelerate_cli", "main")
    return path


def venv_without_torch(path: Path) -> Path:
    """trainguard installed without the [torch] extra: every package of the test venv but
    the torch stack, linked into a real venv, and its ``bin/trainguard``.  Returns that."""
    site = _venv(path)
    for entry in SITE.iterdir():
        if entry.name.lower().startswith(_TORCH_STACK) or entry.name == "__pycache__":
            continue
        os.symlink(entry, site / entry.name)
    bin_dir = path / "bin"
    return _console_script(bin_dir, "trainguard", str(bin_dir / "python"), "trainguard.cli",
                           "main")
