"""Write a resumed copy of the user's training script; never touch the original.

Why a parser and not a search for ``--loss_type``: the old monitor (seed 004) inserted its
``--resume`` line before the line holding ``--loss_type``, overwrote ``train.sh`` in place
and broke on every script not shaped exactly like its example.  Real FluxGym scripts end
with the advanced flags the user changed, sometimes with a dangling continuation, share
several flags on one line, come as ``.bat`` with ``^`` and CRLF, and people add ``cd`` and
``export`` lines before the command.

So the script is split into physical lines and tokenized per line the way the shell
would (quotes, escapes, comments, operators, redirections, the trailing continuation
character), physical lines are grouped into logical commands by their continuations, and
the *training command* is the last command segment that runs ``accelerate``/``python``/
``torchrun`` with a ``.py`` argument or a ``-m`` module (behind ``uv run``, ``conda
run``, ``timeout`` and the like too; ``setup.py`` and ``-m pip`` are never training). In
that segment every existing resume flag (``--resume X``, ``--resume=X``, even with its
value on the next continued line) is removed and ``--resume <absolute path>`` is
appended after the segment's last argument, before any redirection or pipe. Only the
lines that change are rewritten; every other byte (line endings, indentation, comments)
is kept.

The copy is written beside the script (``train.trainguard-resume.sh``) atomically
(temp file, fsync, rename) with the original's mode, so a crash leaves either no copy or
a whole one, and the user's script is only ever read.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainguard.process import resumed_script_path

_LAUNCHERS = re.compile(r"^(accelerate|accelerate-launch|torchrun|python(\d+(\.\d+)?)?)(\.exe)?$",
                        re.IGNORECASE)
_WRAPPERS = {"exec", "nohup", "env", "call", "time", "command", "stdbuf"}
# Programs that run another program given later on their command line, with options of
# their own in between: the launcher is searched for among the words after them.
_RUNNERS = {"uv", "poetry", "pipenv", "conda", "mamba", "micromamba", "pixi", "hatch", "rye",
            "timeout", "nice", "ionice", "taskset", "numactl", "srun", "sudo", "chrt",
            "systemd-run", "start"}
_SEPARATORS = {"|", "||", "&&", ";", "&", ";;", "(", ")", "|&"}
# ``python -m`` modules that install or serve, never train.
_TOOL_MODULES = {"pip", "venv", "ensurepip", "virtualenv", "uv", "site", "compileall",
                 "http.server", "json.tool", "pip._internal", "torch.utils.collect_env"}
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class ScriptError(Exception):
    """The script cannot be rewritten safely; the message names the file and line."""


@dataclass(frozen=True)
class Token:
    line: int      # physical line index
    start: int     # offsets in the line's content (line ending excluded)
    end: int
    value: str     # the word as the shell sees it (quotes removed)
    op: bool       # an operator or redirection, not an argument


@dataclass
class _Line:
    content: str
    ending: str
    tokens: list[Token]
    continued: bool


def script_kind(path: Path) -> str:
    """``bat`` for Windows batch files, ``sh`` for everything else."""
    return "bat" if path.suffix.lower() in (".bat", ".cmd") else "sh"


def resumed_copy_path(script: Path) -> Path:
    """Where the resumed copy of ``script`` goes: beside it, unmistakably ours (the job
    rule in trainguard.process recognises it)."""
    return resumed_script_path(script)


# --------------------------------------------------------------------------- tokenizing


def _tokenize_sh(text: str, lineno: int, where: str) -> tuple[list[Token], bool]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if c == "#":
            return tokens, False  # a comment eats the rest, a trailing backslash included
        if c == "\\" and i == n - 1:
            return tokens, True
        if c in "|&;<>()":
            i = _operator(tokens, text, lineno, i, _SH_OPERATORS)
            continue
        start, value = i, []
        while i < n and text[i] not in " \t|&;<>()":
            c = text[i]
            if c == "\\":
                if i == n - 1:
                    break  # continuation right after a word
                value.append(text[i + 1])
                i += 2
            elif c == "'":
                j = text.find("'", i + 1)
                if j < 0:
                    raise ScriptError(f"{where}: line {lineno + 1}: unterminated ' quote "
                                      "(quotes spanning lines are not supported)")
                value.append(text[i + 1:j])
                i = j + 1
            elif c == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                        value.append(text[i + 1])
                        i += 2
                    else:
                        value.append(text[i])
                        i += 1
                if i >= n:
                    raise ScriptError(f'{where}: line {lineno + 1}: unterminated " quote '
                                      "(quotes spanning lines are not supported)")
                i += 1
            else:
                value.append(c)
                i += 1
        i = _end_word(tokens, text, lineno, start, i, "".join(value))
    return tokens, False


_SH_OPERATORS = frozenset({"||", "&&", ";;", ">>", ">&", "&>", "<<", "<&", "|&", "&>>", ">|"})
_BAT_OPERATORS = frozenset({"||", "&&", ">>", ">&", "<&"})


def _operator(tokens: list[Token], text: str, lineno: int, i: int,
              longer: frozenset[str]) -> int:
    """Append the operator starting at ``i``, as long as ``longer`` allows (``&&``,
    ``>>``...); return where scanning goes on."""
    j = i + 1
    while j < len(text) and text[i:j + 1] in longer:
        j += 1
    tokens.append(Token(lineno, i, j, text[i:j], True))
    return j


def _end_word(tokens: list[Token], text: str, lineno: int, start: int, i: int,
              word: str) -> int:
    """Append the word that ends at ``i`` (or, for ``2>&1``-like text, the redirection
    it starts: a redirection, not an argument); return where scanning goes on."""
    n = len(text)
    if i < n and text[i] in "<>" and word.isdigit():
        j = i + 1
        while j < n and text[j] in ">&":
            j += 1
        tokens.append(Token(lineno, start, j, text[start:j], True))
        return j
    tokens.append(Token(lineno, start, i, word, False))
    return i


def _tokenize_bat(text: str, lineno: int, where: str) -> tuple[list[Token], bool]:
    stripped = text.lstrip()
    if stripped[:2] == "::" or re.match(r"(?i)rem(\s|$)", stripped) or stripped.startswith("@rem"):
        return [], False
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if c == "^" and i == n - 1:
            return tokens, True
        if c in "|&<>()":
            i = _operator(tokens, text, lineno, i, _BAT_OPERATORS)
            continue
        start, value = i, []
        while i < n and text[i] not in " \t|&<>()":
            c = text[i]
            if c == "^":
                if i == n - 1:
                    break
                value.append(text[i + 1])
                i += 2
            elif c == '"':
                j = text.find('"', i + 1)
                if j < 0:
                    raise ScriptError(f'{where}: line {lineno + 1}: unterminated " quote')
                value.append(text[i + 1:j])
                i = j + 1
            else:
                value.append(c)
                i += 1
        i = _end_word(tokens, text, lineno, start, i, "".join(value))
    return tokens, False


def _split_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for m in re.finditer(r"([^\n]*?)(\r?\n|$)", text):
        content, ending = m.group(1), m.group(2)
        if not content and not ending:
            continue
        out.append((content, ending))
    return out


def _parse(text: str, kind: str, where: str) -> list[_Line]:
    tokenize = _tokenize_bat if kind == "bat" else _tokenize_sh
    lines = []
    for idx, (content, ending) in enumerate(_split_lines(text)):
        tokens, continued = tokenize(content, idx, where)
        lines.append(_Line(content, ending, tokens, continued))
    return lines


# --------------------------------------------------------------------------- finding


def _segments(lines: list[_Line]) -> list[list[Token]]:
    """Command segments (between ;, &&, |, ... and logical-line ends), in order."""
    segments: list[list[Token]] = []
    current: list[Token] = []
    for line in lines:
        for tok in line.tokens:
            if tok.op and tok.value in _SEPARATORS:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(tok)
        if not line.continued:
            if current:
                segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def _arguments(segment: list[Token]) -> list[Token]:
    """The segment's argument words: redirections and their targets left out."""
    args: list[Token] = []
    skip_next = False
    for tok in segment:
        if skip_next:
            skip_next = False
            continue
        if tok.op:
            skip_next = not tok.value.endswith("&1") and not tok.value.endswith("&2")
            continue
        args.append(tok)
    return args


def _is_training(args: list[Token]) -> bool:
    """Whether a command segment runs training: a launcher running a ``.py`` file or a
    module (``-m pkg.train``), possibly behind assignments, wrappers (``exec``, ``nohup``)
    or an environment runner (``uv run``, ``conda run -n env``, ``timeout 10h``)."""
    words = [t.value for t in args]
    i = 0
    while i < len(words) and (_ASSIGN.match(words[i]) or words[i].lower() in _WRAPPERS):
        i += 1
    if i >= len(words):
        return False
    if _program(words[i]) in _RUNNERS:
        i = next((j for j in range(i + 1, len(words)) if _LAUNCHERS.match(_program(words[j]))),
                 len(words))
    if i >= len(words) or not _LAUNCHERS.match(_program(words[i])):
        return False
    rest = words[i + 1:]
    return any(w.lower().endswith(".py") and w.lower() != "setup.py" for w in rest) or any(
        w in ("-m", "--module") and k + 1 < len(rest) and not rest[k + 1].startswith("-")
        and rest[k + 1] not in _TOOL_MODULES for k, w in enumerate(rest))


def _program(word: str) -> str:
    """A command word's program name: ``/opt/venv/bin/python3`` -> ``python3``."""
    return re.split(r"[\\/]", word)[-1].lower()


def _training_arguments(lines: list[_Line], where: str) -> list[Token]:
    found = [a for a in (_arguments(s) for s in _segments(lines)) if _is_training(a)]
    if not found:
        raise ScriptError(f"{where}: no training command found (expected accelerate, python or "
                          "torchrun running a .py file or a -m module)")
    return found[-1]


# --------------------------------------------------------------------------- rewriting


def quote(value: str, kind: str) -> str:
    """Quote one argument for the script's shell."""
    if kind == "bat":
        if '"' in value:
            raise ScriptError(f"cannot quote {value!r} for a .bat script: it contains '\"'")
        return '"' + value.replace("%", "%%") + '"'
    return shlex.quote(value)


def rewrite(text: str, kind: str, flag: str, value: str, where: str = "script") -> str:
    """The script text with ``flag value`` set on its training command (see module doc)."""
    lines = _parse(text, kind, where)
    args = _training_arguments(lines, where)
    removed: set[int] = set()
    for k, tok in enumerate(args):
        if k in removed:
            continue
        if tok.value == flag:
            removed.add(k)
            if k + 1 < len(args) and not args[k + 1].value.startswith("-"):
                removed.add(k + 1)
        elif tok.value.startswith(flag + "="):
            removed.add(k)
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
    edits.setdefault(anchor.line, []).append(
        (anchor.end, anchor.end, f" {flag} {quote(value, kind)}"))
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
            continue  # a line that held only the old resume flag: drop it whole
        out.append(new + line.ending)
    return "".join(out)


def resume_argv(command: Sequence[str], flag: str, value: str) -> list[str]:
    """A command job's argv: the configured command minus any resume flag, plus ours."""
    argv: list[str] = []
    skip = False
    for k, arg in enumerate(command):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = k + 1 < len(command) and not command[k + 1].startswith("-")
            continue
        if arg.startswith(flag + "="):
            continue
        argv.append(arg)
    return [*argv, flag, value]


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


def write_resumed_copy(script: Path, flag: str, checkpoint: Path) -> Path:
    """Write the resumed copy of ``script`` beside it and return its path.

    ``checkpoint`` must be absolute: the copy runs from the job's workdir, and a relative
    path there would name a different folder (seed 003).
    """
    if not checkpoint.is_absolute():
        raise ScriptError(f"checkpoint path must be absolute, got {checkpoint}")
    try:
        raw = script.read_bytes()
        mode = script.stat().st_mode
    except OSError as exc:
        raise ScriptError(f"{script}: cannot read the launch script: {exc}") from None
    text = raw.decode("utf-8", "surrogateescape")
    new = rewrite(text, script_kind(script), flag, str(checkpoint), where=str(script))
    target = resumed_copy_path(script)
    try:
        write_atomic(target, new.encode("utf-8", "surrogateescape"), mode)
    except OSError as exc:
        raise ScriptError(f"{target}: cannot write the resumed copy: {exc}") from None
    return target


def training_words(script: Path) -> list[str]:
    """The training command's words as the shell would pass them (for finding its python)."""
    raw = script.read_bytes().decode("utf-8", "surrogateescape")
    lines = _parse(raw, script_kind(script), str(script))
    return [t.value for t in _training_arguments(lines, str(script))]
