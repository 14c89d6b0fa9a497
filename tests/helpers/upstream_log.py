"""Log text exactly as sd-scripts, the diffusers examples and the HF Trainer write it, made by
the real code that writes it: rich's ``RichHandler`` and tqdm's bars (the installed
versions; rich 14.1.0, which sd-scripts pins, renders byte-identical records to the 15.x
here at 80 columns), not hand-typed strings.

This is not a trainer simulator (tests/fixtures holds those): it only produces the bytes a
trainer's log would hold, so the follower's tests and ``bench/replay`` can compose
timelines.  The parts, with the upstream lines they reproduce:

* logger records: sd-scripts ``library/utils.py`` ``setup_logging`` (sd3 branch 48d368fa,
  lines 63-83): ``RichHandler(console=Console(stderr=True))`` with
  ``Formatter(fmt="%(message)s", datefmt="%Y-%m-%d %H:%M:%S")`` at INFO.  Records carry
  the upstream file and line they come from, because rich prints ``file.py:NN`` at the
  right and that column's width decides how the message wraps.  On a pipe (FluxGym's
  ``2>&1``) rich's console is 80 columns wide.
* bars: real ``tqdm`` objects (a registry of their own, so tests do not nest into each
  other's bars).  sd-scripts: ``tqdm(range(max_train_steps - initial_step), smoothing=0,
  desc="steps")`` (train_network.py:1357), never closed; validation bars created while it
  is open (1542, 1618) are nested.
* print(): block-buffered (stdout to a pipe, no ``PYTHONUNBUFFERED``).  It reaches the log
  when tqdm creates a bar on stderr (``tqdm.std.tqdm.status_printer`` flushes stdout) or
  at exit, as measured with ``2>&1 | cat``.  Here: :meth:`print` holds the text,
  :meth:`bar` flushes it, :meth:`exit` flushes it after the never-closed bar's last draw.

With ``real=True`` everything goes to the real ``sys.stderr``/``sys.stdout`` (the
subprocess test runs it that way, so Python's own buffering decides the order).
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, TextIO
from weakref import WeakSet

from rich.console import Console
from rich.logging import RichHandler
from tqdm import tqdm

# Upstream sources of the records the tests use: (file, line) at sd3 branch 48d368fa.
SD = {
    "preparing accelerator": ("train_network.py", 593),
    "caching latents": ("train_util.py", 1170),
    "caching te": ("train_util.py", 1348),
    "resume": ("train_util.py", 4777),
    "load state": ("train_network.py", 969),
    "ignored": ("train_network.py", 1236),
    "skipping": ("train_network.py", 1265),
    "sample": ("flux_train_utils.py", 61),
    "prompt": ("flux_train_utils.py", 182),
    "saving state epoch": ("train_util.py", 5942),
    "saving state step": ("train_util.py", 5964),
    "save train state": ("train_network.py", 946),
    "saving last state": ("train_util.py", 5990),
    "model saved": ("train_network.py", 1729),
}


class _Buffered(io.StringIO):
    """stdout to a pipe: holds print()s until flushed."""


class _Pipe(io.StringIO):
    """The log file behind ``2>&1``: UTF-8, so tqdm draws its unicode blocks as on a pipe."""

    encoding = "utf-8"


class UpstreamLog:
    """One trainer's log being written; :meth:`take` returns what was appended."""

    def __init__(self, *, real: bool = False, clock: float = 1_700_000_000.0) -> None:
        self.real = real
        self.clock = clock
        self._log = _Pipe()
        self._taken = 0
        self._stdout = _Buffered()
        err: TextIO = sys.stderr if real else self._log
        self.err = err
        console = Console(stderr=True) if real else Console(file=err, width=80)
        self._handler = RichHandler(console=console)
        self._handler.setFormatter(logging.Formatter(fmt="%(message)s",
                                                     datefmt="%Y-%m-%d %H:%M:%S"))
        self._bar_cls: Any = type("Bar", (tqdm,), {"_instances": WeakSet()})
        self.bars: list[Any] = []

    # ------------------------------------------------------------------ writers

    def rich(self, message: str, source: tuple[str, int] | str, level: int = logging.INFO,
             ) -> None:
        """A logger record from ``source`` ((file, line) or a key of :data:`SD`)."""
        path, line = SD[source] if isinstance(source, str) else source
        record = logging.LogRecord("upstream", level, f"/sd-scripts/{path}", line, message,
                                   None, None)
        record.created = self.clock
        record.msecs = 0.0
        self._handler.handle(record)

    def logging_line(self, message: str, name: str = "__main__") -> None:
        """A record through ``logging.basicConfig`` as the diffusers examples set it up."""
        import time as _time
        stamp = _time.strftime("%m/%d/%Y %H:%M:%S", _time.localtime(self.clock))
        self.err.write(f"{stamp} - INFO - {name} - {message}\n")
        self.err.flush()

    def print(self, text: str) -> None:
        """print() to block-buffered stdout."""
        if self.real:
            print(text)
        else:
            self._stdout.write(text + "\n")

    def flush_stdout(self) -> None:
        if self.real:
            sys.stdout.flush()
            return
        self._log.write(self._stdout.getvalue())
        self._stdout = _Buffered()

    def bar(self, total: int, desc: str | None = "steps", initial: int = 0,
            leave: bool = True, **kw: Any) -> Any:
        """A real tqdm bar on stderr (creating it flushes stdout, as tqdm does)."""
        if not self.real:
            self.flush_stdout()
        b = self._bar_cls(total=total, initial=initial, desc=desc, file=self.err,
                          smoothing=0, mininterval=0, leave=leave, **kw)
        self.bars.append(b)
        return b

    def steps(self, bar: Any, count: int = 1, postfix: str = "0.1") -> None:
        """``count`` optimizer steps the way sd-scripts reports each (update, set_postfix)."""
        for _ in range(count):
            bar.update(1)
            bar.set_postfix(avr_loss=postfix)

    def exit(self) -> None:
        """The process ends: never-closed bars draw once more (tqdm ``__del__``), then the
        interpreter flushes stdout."""
        for b in reversed(self.bars):
            b.close()
        self.bars.clear()
        self.flush_stdout()

    def kill(self) -> None:
        """The process is killed (a hang's remedy): its bars draw nothing more, its buffered
        print()s are lost, and the next process's bars are top-level again."""
        for b in self.bars:
            b.disable = True       # a dead process's bar objects never draw again
        self.bars.clear()
        self._bar_cls = type("Bar", (tqdm,), {"_instances": WeakSet()})
        self._stdout = _Buffered()

    def take(self) -> bytes:
        """What was appended to the log since the last call."""
        data = self._log.getvalue()
        out, self._taken = data[self._taken:], len(data)
        return out.encode()
