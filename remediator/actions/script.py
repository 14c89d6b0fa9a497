"""Write a resumed copy of the user's training script; never touch the original.

Why a parser and not a search for ``--loss_type``: the old monitor (seed 004) inserted its
``--resume`` line before the line holding ``--loss_type``, overwrote ``train.sh`` in place
and broke on every script not shaped exactly like its example.  The script is read by
:mod:`trainguard.script` (the one script reader, shared with ``init``, the progress code
and the job rule).  In its training command every occurrence of each flag we set
(``--resume X``, ``--resume=X``, even with its value on the next continued line) is
removed and ``--flag value`` is appended after the command's last argument, before any
redirection or pipe.  Only the lines that change are rewritten; every other byte (line
endings, indentation, comments) is kept.

The copy is written beside the script (``train.trainguard-resume.sh``) atomically
(temp file, fsync, rename) with the original's mode, so a crash leaves either no copy or
a whole one, and the user's script is only ever read.  :func:`render_resumed_copy` does
everything but the write, so the remediator can prove a resume possible before it
signals anything.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainguard.process import resumed_script_path
from trainguard.script import ScriptError, Token, parse, read_script, training_segment

__all__ = ["FlagSet", "ScriptError", "render_resumed_copy", "resume_argv", "resumed_copy_path",
           "rewrite", "write_atomic", "write_resumed_copy"]


@dataclass(frozen=True)
class FlagSet:
    """Flags the resumed command must carry, each replacing every existing occurrence.

    ``values``: ``(flag, value)`` pairs; a value of None is a bare switch.  ``remove``:
    ``(flag, takes_value)`` pairs to drop without a replacement (a trainer profile that
    must not pass, say, ``--initial_step`` left over from the user's own resume).
    """

    values: tuple[tuple[str, str | None], ...]
    remove: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def resume(cls, flag: str, checkpoint: Path) -> FlagSet:
        """Just the resume flag.  The path must be absolute: the copy runs from the job's
        workdir, and a relative path there would name a different folder (seed 003)."""
        if not checkpoint.is_absolute():
            raise ScriptError(f"checkpoint path must be absolute, got {checkpoint}")
        return cls(((flag, str(checkpoint)),))

    def dropped(self) -> list[tuple[str, bool]]:
        """Every flag whose old occurrences go, and whether it consumes a value."""
        return [(f, v is not None) for f, v in self.values] + list(self.remove)

    def words(self) -> list[str]:
        out: list[str] = []
        for flag, value in self.values:
            out.append(flag)
            if value is not None:
                out.append(value)
        return out


def resumed_copy_path(script: Path) -> Path:
    """Where the resumed copy of ``script`` goes: beside it, unmistakably ours (the job
    rule in trainguard.process recognises it)."""
    return resumed_script_path(script)


def quote(value: str, kind: str) -> str:
    """Quote one argument for the script's shell."""
    if kind == "bat":
        if '"' in value:
            raise ScriptError(f"cannot quote {value!r} for a .bat script: it contains '\"'")
        return '"' + value.replace("%", "%%") + '"'
    return shlex.quote(value)


def _removed(words: Sequence[str], dropped: Sequence[tuple[str, bool]]) -> set[int]:
    """Indexes of the words that belong to a dropped flag (the flag and its value)."""
    removed: set[int] = set()
    for k, word in enumerate(words):
        if k in removed:
            continue
        for flag, takes_value in dropped:
            if word == flag:
                removed.add(k)
                if takes_value and k + 1 < len(words) and not words[k + 1].startswith("-"):
                    removed.add(k + 1)
            elif word.startswith(flag + "="):
                removed.add(k)
    return removed


def rewrite(text: str, kind: str, flags: FlagSet, where: str = "script") -> str:
    """The script text with ``flags`` set on its training command (see module doc)."""
    lines = parse(text, kind, where)
    args: list[Token] = training_segment(lines, where)
    removed = _removed([t.value for t in args], flags.dropped())
    kept = [t for k, t in enumerate(args) if k not in removed]
    anchor = kept[-1]  # the program word itself is never removed
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for k in sorted(removed):
        tok = args[k]
        content = lines[tok.line].content
        start = tok.start
        while start > 0 and content[start - 1] in " \t":
            start -= 1
        edits.setdefault(tok.line, []).append((start, tok.end, ""))
    added = "".join(f" {flag}" + ("" if value is None else f" {quote(value, kind)}")
                    for flag, value in flags.values)
    edits.setdefault(anchor.line, []).append((anchor.end, anchor.end, added))
    cont = "^" if kind == "bat" else "\\"
    out: list[str] = []
    for idx, line in enumerate(lines):
        if idx not in edits:
            out.append(line.content + line.ending)
            continue
        pieces, pos = [], 0
        for start, end, repl in sorted(edits[idx], key=lambda e: (e[0], e[1])):
            pieces.append(line.content[pos:start])
            pieces.append(repl)
            pos = max(pos, end)
        pieces.append(line.content[pos:])
        new = "".join(pieces)
        if line.continued and new.strip() == cont:
            continue  # a line that held only a dropped flag: drop it whole
        out.append(new + line.ending)
    return "".join(out)


def resume_argv(command: Sequence[str], flags: FlagSet) -> list[str]:
    """A command job's argv: the configured command minus the flags we set, plus ours."""
    removed = _removed(command, flags.dropped())
    return [a for k, a in enumerate(command) if k not in removed] + flags.words()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def render_resumed_copy(script: Path, flags: FlagSet) -> tuple[Path, bytes, int]:
    """(where the copy goes, its bytes, its mode): everything but the write.

    Raises :class:`ScriptError` when the script cannot be read or has no training command.
    """
    parsed = read_script(script)
    new = rewrite(parsed.text, parsed.kind, flags, where=str(script))
    try:
        mode = script.stat().st_mode
    except OSError as exc:
        raise ScriptError(f"{script}: cannot stat the launch script: {exc}") from None
    return resumed_copy_path(script), new.encode("utf-8", "surrogateescape"), mode


def write_resumed_copy(script: Path, flags: FlagSet) -> Path:
    """Write the resumed copy of ``script`` beside it and return its path."""
    target, data, mode = render_resumed_copy(script, flags)
    try:
        write_atomic(target, data, mode)
    except OSError as exc:
        raise ScriptError(f"{target}: cannot write the resumed copy: {exc}") from None
    return target
