"""Tell apart what a trainer wrote into its log: bar redraws, logger records, plain lines.

Why a parser and not one regular expression per line: under ``2>&1 | tee`` (FluxGym) a
log is three writers interleaved, and only some of what they write arrives on time.

* **tqdm bars** (stderr, flushed on every redraw) rewrite one line with ``\\r``.  A bar
  drawn while another is open (sd-scripts' validation and sample-denoising bars, the HF
  Trainer's evaluation bar) is *nested*: tqdm writes ``\\n``, the bar, then a cursor-up
  escape ``\\x1b[A`` per level (``tqdm.std.tqdm.display``/``moveto``).  A nested bar with
  ``leave=True`` is drawn one last time *without* the escape when it closes, at the
  parent's line (``tqdm.std.tqdm.close``: ``self.display(pos=0)``); :class:`LogParser`
  remembers the last nested bar so that closing draw is not taken for the parent.
* **Logger records** from sd-scripts go through rich's ``RichHandler(console=Console(
  stderr=True))`` (``library/utils.py`` ``setup_logging``, sd3 branch 48d368fa): at 80
  columns each record is a table row, time (19 characters, blank when the same second as
  the previous record), level, message, and ``file.py:NN`` at the right of the first line;
  the message wraps over further lines indented to the message column, and a word longer
  than the column is folded mid-word.  A record can start on the line of the last bar
  redraw (the bar leaves the cursor at its end).  They are on stderr and arrive at once.
  The diffusers examples log through ``logging.basicConfig(format="%(asctime)s -
  %(levelname)s - %(name)s - %(message)s")`` on stderr: one line per record.
* **print()** goes to stdout, which is block-buffered when it is a pipe or file and
  nobody set ``PYTHONUNBUFFERED`` (FluxGym sets none): such lines reach the log only when
  tqdm creates or closes a bar (it flushes stdout then) or the process exits, i.e. late
  and out of order.  They are :class:`Plain` and must never date an event.

The parser keeps only the state a continuation line needs (the open record); it is fed
one physical piece at a time (text between ``\\r``/``\\n`` terminators) by the follower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# SGR colours and cursor show/hide: styling, not content.  Cursor-up is kept: it marks
# nested bars.
_STYLE_RE = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?\d+[hl]|\x1b\]8;[^\x07\x1b]*(?:\x07|\x1b\\)")
_CURSOR_UP_RE = re.compile(r"(?:\x1b\[A)+\s*$")
# tqdm's default format: "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [...]"
# (tqdm.std.tqdm.format_meter); no desc: the line starts with the percentage.
BAR_RE = re.compile(
    r"^\s*(?:(?P<desc>[^|\r\n]*?):\s*)?(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+|\?)")
# One rich record's first line: [time or its blank] level message ... file.py:NN
_RICH_RE = re.compile(
    r"(?P<head>(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\[[^\]\r\n]{5,40}\])?\s*)"
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)(?P<pad> {1,8})"
    r"(?P<msg>.*?)\s*(?P<src>[\w.\-]+\.py:\d+)\s*$")
# logging.basicConfig as the diffusers examples set it up: "%m/%d/%Y %H:%M:%S - LEVEL - name - msg"
# (it too can start on the line of the last bar redraw).
_LOGGING_RE = re.compile(
    r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d - (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) - [\w.\-]+ - "
    r"(?P<msg>.*)$")


@dataclass(frozen=True)
class Bar:
    """One tqdm redraw.  ``text`` is the bar part of the piece (what step patterns see)."""

    desc: str
    n: int
    total: int | None
    nested: bool
    text: str


@dataclass(frozen=True)
class Record:
    """A logger record as far as it has arrived; ``serial`` is the same while it grows."""

    message: str
    serial: int


@dataclass(frozen=True)
class Plain:
    """Anything else: print() output (possibly late), tracebacks, foreign tools."""

    text: str


Event = Bar | Record | Plain


def parse_bar(text: str) -> Bar | None:
    """The tqdm bar at the start of ``text``, if any (nesting not judged here)."""
    m = BAR_RE.match(text)
    if m is None:
        return None
    total = m["total"]
    return Bar((m["desc"] or "").strip(), int(m["n"]), int(total) if total.isdigit() else None,
               nested=False, text=text)


_LEVEL_COLUMN = 9          # rich's level column: 8 characters and a space
_DEFAULT_MSG_COL = 20 + _LEVEL_COLUMN   # a 19-character time and its space, then the level


class LogParser:
    """Turns pieces of a log into events; see the module docstring for why."""

    def __init__(self) -> None:
        self._serial = 0
        self._open: list[str] | None = None    # the open record's message lines
        self._msg_col = _DEFAULT_MSG_COL        # where its continuation lines start
        self._nested_last: tuple[str, int | None] | None = None

    def piece(self, raw: str, after_newline: bool) -> list[Event]:
        """Events for one complete piece.  ``after_newline``: it starts a physical line."""
        text = _STYLE_RE.sub("", raw)
        nested = _CURSOR_UP_RE.search(text) is not None
        if nested:
            text = _CURSOR_UP_RE.sub("", text)
        if self._open is not None and after_newline and not nested \
                and self._continues(text):
            self._open.append(text.strip())
            return [self._record()]
        self._open = None
        if not text.strip():
            return []
        if nested:
            bar = parse_bar(text)
            if bar is None:
                return []
            self._nested_last = (bar.desc, bar.total)
            return [Bar(bar.desc, bar.n, bar.total, True, text)]
        m = _RICH_RE.search(text)
        if m is not None:
            out: list[Event] = []
            before = text[:m.start()]
            if before.strip():
                out.extend(self._plain_or_bar(before))
            else:
                # rich's columns: time (19) + 1, level (8) + 1, then the message.
                self._msg_col = m.start("level") + _LEVEL_COLUMN
            self._open = [m["msg"].strip()]
            self._serial += 1
            out.append(self._record())
            return out
        m2 = _LOGGING_RE.search(text)
        if m2 is not None:
            out = self._plain_or_bar(text[:m2.start()]) if text[:m2.start()].strip() else []
            self._serial += 1
            out.append(Record(_squash(m2["msg"]), self._serial))
            return out
        return self._plain_or_bar(text)

    def tail(self, raw: str) -> Bar | None:
        """The unterminated end of the log: the bar on screen right now, if it is one."""
        text = _STYLE_RE.sub("", raw)
        if _CURSOR_UP_RE.search(text):
            return None
        m = _RICH_RE.search(text)
        if m is not None:
            text = text[:m.start()]
        return self._top_bar(text)

    def _plain_or_bar(self, text: str) -> list[Event]:
        bar = self._top_bar(text)
        return [bar] if bar is not None else [Plain(text)]

    def _top_bar(self, text: str) -> Bar | None:
        bar = parse_bar(text)
        if bar is None:
            return None
        if self._nested_last is not None and (bar.desc, bar.total) == self._nested_last:
            # A nested bar's leave=True closing draw lands on the parent's line, with no
            # cursor-up (tqdm.close: display(pos=0)); at exit even unfinished ones draw so.
            self._nested_last = None
            return Bar(bar.desc, bar.n, bar.total, True, text)
        return bar

    def _continues(self, text: str) -> bool:
        col = self._msg_col
        return len(text) > col and not text[:col].strip() and text[col] != " "

    def _record(self) -> Record:
        assert self._open is not None
        return Record(_squash(" ".join(self._open)), self._serial)


def _squash(text: str) -> str:
    return " ".join(text.split())


def compact(message: str) -> str:
    """The message with every blank removed: rich folds long words (paths) mid-word, so a
    path is compared in this form (a path's own blanks vanish the same way on both sides)."""
    return re.sub(r"\s+", "", message)
