"""Which config a command means when the user gives no ``--config``.

Why: the remediator's log tells a person to run ``trainguard remediator reset my-lora``;
typed as printed, it must find the config rather than fail on a missing option.  The
places looked at, in order, are the ones a user already has:

1. ``--config FILE``, when given;
2. ``$TRAINGUARD_CONFIG``: the same variable docker-compose.yml reads (the config's path);
3. ``./trainguard.yaml``: the name ``trainguard init`` writes, beside the FluxGym root.

Nothing else is guessed (no search up the tree, no home folder): acting on a job of the
wrong config would be worse than asking.  Commands that act on one job (reset, pause,
unpause) use :func:`find_config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "TRAINGUARD_CONFIG"
DEFAULT_NAME = "trainguard.yaml"  # what `trainguard init` writes


class NoConfigError(Exception):
    """No config was given or found; the message says where it was looked for."""


def find_config(given: str | os.PathLike[str] | None, *, cwd: Path | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    """The config file to load: ``given``, else ``$TRAINGUARD_CONFIG``, else
    ``./trainguard.yaml`` when it exists.  Raises :class:`NoConfigError`.

    The path is returned as given (relative to the cwd); the loader reports a path that
    does not exist, naming it.
    """
    if given:
        return Path(given)
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    here = Path.cwd() if cwd is None else cwd
    if (here / DEFAULT_NAME).is_file():
        return here / DEFAULT_NAME
    raise NoConfigError(f"no config given and none found: pass --config FILE, set "
                        f"{ENV_VAR}=FILE, or run this in the folder holding {DEFAULT_NAME} "
                        f"(trainguard init writes it beside the FluxGym root; not in {here})")
