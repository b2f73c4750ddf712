"""Progress of the phases that take more than a few seconds (calibration, verification, scoring, timing, eval
references), shown only when a command turns it on with :func:`enable`.

Library code wraps a phase in ``with task("verifying on 10 images", total=10) as advance: ...`` and calls
``advance()`` after each item; with reporting off (the default: the Python API and tests) that costs nothing
and prints nothing. On a terminal the phases are rich progress bars with elapsed and remaining time; nested
phases show as extra lines. Elsewhere (output piped to a file, or while another rich display such as
distill's owns the terminal) they are plain lines, written whole and never cut at a terminal width: a line
when a phase starts, one every :data:`PLAIN_EVERY_S` seconds with the count, elapsed time and an estimate of
what is left, and one when it ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_EVERY_S = 10.0  # seconds between plain progress lines of one phase
Advance = Callable[..., None]

_state: dict = {"console": None, "live": None, "depth": 0}


def stderr_console() -> Console:
    """Return a rich Console on stderr: the terminal's own width on a terminal; elsewhere no width limit and
    no wrapping, so a piped line is written whole."""
    if sys.stderr.isatty():
        return Console(stderr=True)
    return Console(stderr=True, width=100_000, soft_wrap=True)


def stdout_console() -> Console:
    """Return a rich Console on stdout for tables: the terminal's width on a terminal; elsewhere wide enough for
    any table sr-shrink prints (250 columns), so that a table written to a file keeps its borders."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=250, soft_wrap=True)


def enable(console: Console | None = None) -> None:
    """Turn progress reporting on for this process, drawn on ``console`` (default: :func:`stderr_console`)."""
    _state["console"] = console or stderr_console()


def disable() -> None:
    """Turn progress reporting off again (what the library starts with)."""
    _state["console"] = None


def enabled() -> bool:
    """Return True when a command has turned progress reporting on."""
    return _state["console"] is not None


def clock(seconds: float) -> str:
    """Return ``seconds`` as ``M:SS`` (or ``H:MM:SS`` from an hour on)."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _foreign_live() -> bool:
    """Return True while another rich live display (e.g. distill's bars) has taken over stdout/stderr."""
    return isinstance(sys.stderr, FileProxy) or isinstance(sys.stdout, FileProxy)


def _plain(console: Console, text: str) -> None:
    """Write one progress line whole: through rich's proxy while another display is live, else to ``console``."""
    if _foreign_live():
        print(text, file=sys.stderr, flush=True)
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def task(description: str, total: int | None = None, unit: str = "items", quiet_s: float = 0.0) -> Iterator[Advance]:
    """Yield ``advance(n=1)`` for one phase of ``total`` items (None: unknown, elapsed time only), which plain
    lines call ``unit``; see the module docstring for what is shown. ``quiet_s``: plain lines start only once the
    phase has run that long (checked at each ``advance``), so a phase that is quick on this machine and model
    leaves no lines. Reporting off: ``advance`` does nothing."""
    console = _state["console"]
    if console is None:
        yield lambda n=1: None
        return
    if console.is_terminal and (_state["live"] is not None or not _foreign_live()):
        with _bar(console, description, total) as advance:
            yield advance
        return
    with _lines(console, description, total, unit, quiet_s) as advance:
        yield advance


@contextmanager
def _bar(console: Console, description: str, total: int | None) -> Iterator[Advance]:
    """A rich bar in the one Progress display shared by all open phases (started by the outermost)."""
    if _state["live"] is None:
        _state["live"] = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console)
        _state["live"].start()
    live: Progress = _state["live"]
    _state["depth"] += 1
    tid = live.add_task(("  " * (_state["depth"] - 1)) + description, total=total)
    try:
        yield lambda n=1: live.advance(tid, n)
    finally:
        live.remove_task(tid)
        _state["depth"] -= 1
        if _state["depth"] == 0:
            live.stop()
            _state["live"] = None


class Lines:
    """One phase as plain lines on ``console``: a line at the start, one every :data:`PLAIN_EVERY_S` seconds from
    :meth:`advance` (count, elapsed, an estimate of what is left, and ``note``), one from :meth:`close`. ``done``
    items may already be behind it (a resumed phase); the estimate counts only this process's pace. ``unit`` names
    the items in the first line. ``quiet_s``: the first line waits until an :meth:`advance` finds the phase that old
    (it then says how far it got); a phase that ends sooner writes nothing."""

    def __init__(self, console: Console, description: str, total: int | None, done: int = 0, unit: str = "items",
                 quiet_s: float = 0.0):
        self.console, self.description, self.total = console, description, total
        self.start_done, self.done, self.unit, self.quiet_s = done, done, unit, quiet_s
        self.t0 = self.last = time.perf_counter()
        self.shown = False
        if quiet_s <= 0:
            self._start()

    def _start(self) -> None:
        self.shown = True
        behind = self.done - self.start_done
        resumed = f", {self.start_done} done before" if self.start_done else ""
        so_far = f", {behind} done" if behind else ""
        _plain(self.console, f"{self.description}: started"
               + (f" ({counted(self.total, self.unit)}{resumed}{so_far})" if self.total else ""))

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items; write a line when :data:`PLAIN_EVERY_S` seconds have passed since the last (the
        first one once the phase is ``quiet_s`` old)."""
        self.done += n
        now = time.perf_counter()
        if not self.shown:
            if now - self.t0 >= self.quiet_s:
                self._start()
                self.last = now
            return
        if now - self.last >= PLAIN_EVERY_S:
            self.last = now
            _plain(self.console, f"{self.description}: {self.status(now)}" + (f", {note}" if note else ""))

    def set_total(self, total: int, why: str) -> None:
        """Change the phase's total to ``total`` and say so in a line with the reason ``why``."""
        _plain(self.console, f"{self.description}: {counted(total, self.unit)} instead of {self.total}: {why}")
        self.total = total

    def status(self, now: float) -> str:
        """Return ``k/N, M:SS elapsed, about M:SS left`` for this phase at time ``now``."""
        elapsed = now - self.t0
        if not self.total:
            return f"{self.done} done, {clock(elapsed)} elapsed"
        text = f"{self.done}/{self.total}, {clock(elapsed)} elapsed"
        ran = self.done - self.start_done
        if ran > 0 and self.done < self.total:
            text += f", about {clock(elapsed / ran * (self.total - self.done))} left"
        return text

    def close(self, stopped: bool = False) -> None:
        """Write the phase's last line (returns nothing): "done in" (``stopped``: "stopped after", for a phase an
        exception or Ctrl-C cut short) and the time, with the count when it stopped short of its total, or, for a
        phase of unknown total, how many items it did (when it counted any). Nothing for a phase never shown."""
        if not self.shown:
            return
        if self.total:
            count = f" ({self.done}/{self.total})" if self.done != self.total else ""
        else:
            count = f" ({counted(self.done, self.unit)})" if self.done else ""
        ended = "stopped after" if stopped else "done in"
        _plain(self.console, f"{self.description}: {ended} {clock(time.perf_counter() - self.t0)}{count}")


def counted(n: int, unit: str) -> str:
    """Return "``n`` ``unit``" with the unit's first word in the singular for one ("1 item", "1 band of rows";
    ``unit`` is given in the plural)."""
    if n == 1:
        first, _, rest = unit.partition(" ")
        unit = " ".join(w for w in (first.removesuffix("s"), rest) if w)
    return f"{n} {unit}"


@contextmanager
def _lines(console: Console, description: str, total: int | None, unit: str = "items",
           quiet_s: float = 0.0) -> Iterator[Advance]:
    """Plain lines: at the start (or once ``quiet_s`` old), every PLAIN_EVERY_S seconds, and at the end
    (:class:`Lines`)."""
    lines = Lines(console, description, total, unit=unit, quiet_s=quiet_s)
    try:
        yield lines.advance
    except BaseException:  # an error or Ctrl-C: the phase did not get done
        lines.close(stopped=True)
        raise
    lines.close()
