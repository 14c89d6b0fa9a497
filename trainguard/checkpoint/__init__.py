"""The checkpoint doctor (read-only): find, inspect and rank training checkpoints.

Never imports torch and never unpickles with real globals, so it runs in the monitoring
path even where torch is broken, and a crafted checkpoint cannot run code in it.
Writes (repair) live in ``remediator.repair``.
"""

from trainguard.checkpoint.doctor import DEFAULT_WRITING_FRESH_SECONDS, inspect_checkpoint
from trainguard.checkpoint.model import USABLE, CheckpointInfo, Status
from trainguard.checkpoint.order import by_progress, progress_key
from trainguard.checkpoint.scanner import CheckpointScanner, latest_usable, list_checkpoints

__all__ = [
    "DEFAULT_WRITING_FRESH_SECONDS",
    "USABLE",
    "CheckpointInfo",
    "CheckpointScanner",
    "Status",
    "by_progress",
    "inspect_checkpoint",
    "latest_usable",
    "list_checkpoints",
    "progress_key",
]
