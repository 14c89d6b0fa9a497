"""`trainguard checkpoint repair CKPT_DIR [--dry-run] [--python EXE] [--json]`.

Exit codes (DESIGN.md §2): 0 repaired or nothing to do, 1 refused (invalid or
half-written checkpoint) or failed with nothing changed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard.checkpoint.compat import Environment

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

TORCH_EXTRA = "pip install 'trainguard[torch]'"


def cmd_repair(args: argparse.Namespace) -> int:
    from remediator.repair import RepairError, apply_repair, plan_repair

    folder = Path(args.checkpoint_dir).expanduser().absolute()
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        print(f"trainguard: checkpoint folder {folder}: {what}", file=sys.stderr)
        return 2
    env = None
    if args.python:
        try:
            env = Environment.of_python(args.python)
        except ValueError as exc:
            print(f"trainguard: --python: {exc}", file=sys.stderr)
            return 2
    try:
        plan = plan_repair(folder, env)
        result = apply_repair(plan, dry_run=args.dry_run)
    except RepairError as exc:
        print(f"trainguard: repair: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"trainguard: repair needs torch and numpy in this environment "
              f"({TORCH_EXTRA}): {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"path": str(folder), "dry_run": args.dry_run,
                          "changes": plan.describe() if plan.needed else [],
                          "env_fixes": dict(plan.env_fixes),
                          "changed": [str(p) for p in result.changed],
                          "backups": [str(p) for p in result.backups]}, indent=2))
        return 0
    prefix = "would " if args.dry_run and plan.needed else ""
    for line in plan.describe():
        print(f"{prefix}{line}")
    for b in result.backups:
        print(f"backup: {b}")
    return 0


def register(registry: CommandRegistry) -> None:
    """Add `checkpoint repair` under the front door's checkpoint command."""
    p = registry.checkpoint.add_parser(
        "repair", help="make a checkpoint's RNG files loadable where it resumes "
                       "(with a backup; needs the torch extra)",
        description="Rewrite random_states_*.pkl only where the resuming environment "
                    "cannot load it as it is (numpy module names), and say which "
                    "environment variable it needs instead where a file change cannot "
                    "help. Backs up first, replaces atomically, does nothing twice. "
                    f"Needs torch and numpy in this environment: {TORCH_EXTRA}.")
    p.add_argument("checkpoint_dir", metavar="CKPT_DIR")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--python", metavar="EXE", help="repair for this interpreter's numpy "
                   "(default: the one running trainguard)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_repair)
