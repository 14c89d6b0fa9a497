"""Reading a secret from its file: the one rule for the webhook token and the notify secrets.

Secrets live only in files readable by their owner (as ssh insists for keys): a config
may be shared, pasted into an issue or committed, a secret file never is.  A file others
can read is refused, not warned about: a warning nobody reads protects nothing, and the
fix is one ``chmod``.
"""

from __future__ import annotations

from pathlib import Path


class SecretError(Exception):
    """The secret file is missing, unreadable, too open or malformed; the message says
    which file and what to do."""


def read_secret(path: Path, what: str) -> str:
    """The one line ``path`` holds (surrounding whitespace stripped).

    ``what`` names the secret for messages ("the webhook token file
    (remediator.token_file)").
    """
    try:
        mode = Path(path).stat().st_mode
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{path}: cannot read {what}: {exc.__class__.__name__}") from None
    if mode & 0o077:
        raise SecretError(f"{path}: {what} is readable by other users (mode "
                          f"{mode & 0o777:o}); run `chmod 600 {path}`")
    if not text or "\n" in text:
        raise SecretError(f"{path}: {what} must hold exactly one non-empty line")
    return text
