"""Read a training launch script the way its shell would: the one script reader.

Everyone who needs to know what a user's ``train.sh``/``train.bat`` runs asks here:
``trainguard init`` (where the run writes), the progress code (``--output_name``), the
job rule in :mod:`trainguard.process` (what a training command looks like), and the
remediator's rewriter (where to put the resume flag).  Three readers used to disagree:
``init`` kept the quotes of ``--output_dir '/a b'``.  This module only reads.

Why a tokenizer and not a regex: real FluxGym scripts end with the advanced flags the
user changed, sometimes with a dangling continuation, share several flags on one line,
come as ``.bat`` with ``^`` and CRLF, and people add ``cd`` and ``export`` lines before
the command.  So the script is split into physical lines, each tokenized the way the
shell would (quotes, escapes, comments, operators, redirections, the trailing
continuation character); physical lines are grouped into logical commands by their
continuations; and the *training command* is the last command segment that runs
``accelerate``/``python``/``torchrun``/``deepspeed`` with a ``.py`` argument or a ``-m``
module (behind ``uv run``, ``conda run``, ``timeout`` and the like too; ``setup.py`` and
``-m pip`` are never training).  What the shell would expand at run time (``"$T"``) is
not guessed: a script whose training command hides behind a variable has no training
command here, and the remediator refuses to act on it rather than kill a run it cannot
resume.

:func:`is_training_command` is the same test applied to a process's argv, so the job
rule and the rewriter agree on what "the training" is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_LAUNCHERS = re.compile(
    r"^(accelerate|accelerate-launch|torchrun|deepspeed|python(\d+(\.\d+)?)?)(\.exe)?$",
    re.IGNORECASE)
_WRAPPERS = {"exec", "nohup", "env", "call", "time", "command", "stdbuf", "setsid"}
# Programs that run another program given later on their command line, with options of
# their own in between: the launcher is searched for among the words after them.
_RUNNERS = {"uv", "poetry", "pipenv", "conda", "mamba", "micromamba", "pixi", "hatch", "rye",
            "timeout", "nice", "ionice", "taskset", "numactl", "srun", "sudo", "chrt",
            "systemd-run", "start"}
_SEPARATORS = {"|", "||", "&&", ";", "&", ";;", "(", ")", "|&"}
# ``python -m`` modules that install or serve, never train.
_TOOL_MODULES = {"pip", "venv", "ensurepip", "virtualenv", "uv", "site", "compileall",
                 "http.server", "json.tool", "pip._internal", "torch.utils.collect_env",
                 "tensorboard.main", "trainguard"}
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Programs that run a script file given as their first non-option argument.
SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh", "mksh", "busybox"})


class ScriptError(Exception):
    """The script cannot be read as a training script; the message names file and line."""


@dataclass(frozen=True)
class Token:
    line: int      # physical line index
    start: int     # offsets in the line's content (line ending excluded)
    end: int
    value: str     # the word as the shell sees it (quotes removed)
    op: bool       # an operator or redirection, not an argument


@dataclass
class Line:
    content: str
    ending: str
    tokens: list[Token]
    continued: bool


def script_kind(path: Path) -> str:
    """``bat`` for Windows batch files, ``sh`` for everything else."""
    return "bat" if path.suffix.lower() in (".bat", ".cmd") else "sh"


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


def parse(text: str, kind: str, where: str = "script") -> list[Line]:
    """The script's physical lines, each tokenized as its shell would."""
    tokenize = _tokenize_bat if kind == "bat" else _tokenize_sh
    lines = []
    for idx, (content, ending) in enumerate(_split_lines(text)):
        tokens, continued = tokenize(content, idx, where)
        lines.append(Line(content, ending, tokens, continued))
    return lines


# --------------------------------------------------------------------------- finding


def _segments(lines: list[Line]) -> list[list[Token]]:
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


def launcher_index(words: Sequence[str]) -> int | None:
    """Where the launcher (``accelerate``, ``python``...) of a training command sits in
    ``words``, or None when ``words`` is not a training command.

    A training command is a launcher running a ``.py`` file or a module (``-m
    pkg.train``), possibly behind assignments, wrappers (``exec``, ``nohup``) or an
    environment runner (``uv run``, ``conda run -n env``, ``timeout 10h``).  The same
    test reads a script's command and a live process's argv (where ``accelerate`` shows
    as ``python /venv/bin/accelerate launch ...``).
    """
    i = 0
    while i < len(words) and (_ASSIGN.match(words[i]) or words[i].lower() in _WRAPPERS):
        i += 1
    if i >= len(words):
        return None
    if program(words[i]) in _RUNNERS:
        i = next((j for j in range(i + 1, len(words)) if _LAUNCHERS.match(program(words[j]))),
                 len(words))
    if i >= len(words) or not _LAUNCHERS.match(program(words[i])):
        return None
    rest = words[i + 1:]
    runs_file = any(w.lower().endswith(".py") and program(w) != "setup.py" for w in rest)
    runs_module = any(
        w in ("-m", "--module") and k + 1 < len(rest) and not rest[k + 1].startswith("-")
        and rest[k + 1] not in _TOOL_MODULES and rest[k + 1].split(".")[0] not in _TOOL_MODULES
        for k, w in enumerate(rest))
    return i if runs_file or runs_module else None


def is_training_command(words: Sequence[str]) -> bool:
    """Whether ``words`` (a script's command or a process's argv) runs training."""
    return launcher_index(words) is not None


def program(word: str) -> str:
    """A command word's program name: ``/opt/venv/bin/python3`` -> ``python3``."""
    return re.split(r"[\\/]", word)[-1].lower()


def flag_values(words: Sequence[str], flags: Sequence[str]) -> list[str]:
    """Every value given to one of ``flags`` (``--f X`` or ``--f=X``), in order.

    argparse lets the last one win; callers that want "the" value take ``[-1]``.
    """
    out: list[str] = []
    for i, w in enumerate(words):
        for flag in flags:
            if w == flag and i + 1 < len(words):
                out.append(words[i + 1])
            elif w.startswith(flag + "="):
                out.append(w.split("=", 1)[1])
    return out


def flag_value(words: Sequence[str], flag: str) -> str | None:
    """The value argparse would see for ``flag`` (the last one given), or None."""
    values = flag_values(words, (flag,))
    return values[-1] if values else None


def has_flag(words: Sequence[str], flag: str) -> bool:
    """Whether ``flag`` is given at all (as a switch, with a value, or ``--f=X``)."""
    return any(w == flag or w.startswith(flag + "=") for w in words)


def training_segment(lines: list[Line], where: str = "script") -> list[Token]:
    """The argument tokens of the script's training command (the last one, if several).

    Raises :class:`ScriptError` when there is none, naming the file.
    """
    found = [a for a in (_arguments(s) for s in _segments(lines))
             if is_training_command([t.value for t in a])]
    if not found:
        raise ScriptError(f"{where}: no training command found (expected accelerate, python, "
                          "torchrun or deepspeed running a .py file or a -m module, written "
                          "out in the script, not behind a shell variable)")
    return found[-1]


@dataclass(frozen=True)
class Script:
    """A launch script as read now: its text, kind and the training command's words."""

    path: Path
    text: str
    kind: str
    lines: tuple[Line, ...]
    command: tuple[str, ...]   # the training command's words, as the shell passes them


def read_script(path: Path) -> Script:
    """Read and parse ``path``; :class:`ScriptError` names the file and what is wrong."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read the launch script: "
                          f"{exc.strerror or exc}") from None
    text = raw.decode("utf-8", "surrogateescape")
    kind = script_kind(Path(path))
    lines = parse(text, kind, str(path))
    words = tuple(t.value for t in training_segment(lines, str(path)))
    return Script(Path(path), text, kind, tuple(lines), words)
