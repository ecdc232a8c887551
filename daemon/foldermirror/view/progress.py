"""`sync` at a terminal: one progress line under the log lines, then a summary (or the interrupted line).

`render` is a pure function of the catch-ups' counts (CatchUpTracker.totals), the rates and
the terminal's width, so the line is tested without a terminal. `Terminal` is the stderr that
both the log lines and the bar write to: a log line clears the bar, goes out whole, and the
bar comes back under it. The bar is drawn at most every REDRAW seconds and is never as wide
as the terminal: a line that reaches the last column can wrap, and a wrapped line cannot be
redrawn in place with a carriage return.

Plain stdlib rather than tqdm: what a bar library would save (the line, its width, the
rate) is about a hundred lines here, while what it cannot do for us (log lines from
structlog on other threads written above the bar, the comparison's counts before any total
is known) would be ours anyway; and the daemon installed under systemd needs no
terminal-only dependency.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from foldermirror.catchup.tracking import SyncCounts
from foldermirror.view.status_table import duration, size

REDRAW = 0.1           # seconds between two draws of the bar: at most 10 a second
RATE_WINDOW = 5.0      # the rate is over this many seconds: recent enough to follow a change of pace
BAR_MIN, BAR_MAX = 12, 30  # the bar's width, brackets included
CLEAR = "\r\x1b[K"     # to the line's start, then erase to its end

Rates = tuple[float, float]  # (files, bytes) per second


def render(c: SyncCounts, width: int, label: str = "", rates: Rates | None = None) -> str:
    """The progress line for counts `c` on a terminal `width` columns wide (at most width - 1 long).

    While some folder is still being compared the totals are still growing: the line says how
    far the comparison got. Then it is a bar with files and bytes done of the total, the rate
    and the time left. What does not fit goes, least useful first.
    """
    failed = f"{c.failed:,} failed" if c.failed else ""
    rate = _rate(rates, c)
    if c.comparing:
        parts = [(6, label), (0, f"comparing: {c.entries:,} entries"),
                 (3, f"{c.to_copy:,} to copy ({size(c.bytes_to_copy)})"), (1, f"{c.files:,} copied"),
                 (2, failed), (8, rate)]
        return _fit(parts, width, None)
    files_total, bytes_total = max(c.to_copy, c.files), max(c.bytes_to_copy, c.bytes)
    if bytes_total:
        fraction = c.bytes / bytes_total
    else:
        fraction = c.files / files_total if files_total else 1.0
    parts = [(6, label), (0, f"{int(fraction * 100):3d}%"), (5, _BAR), (1, f"{c.files:,}/{files_total:,} files"),
             (4, _of(c.bytes, bytes_total) if bytes_total else ""), (2, failed), (8, rate), (7, _eta(c, rates))]
    return _fit(parts, width, fraction)


_BAR = "\0bar"  # where the bar goes; its width is what the other parts leave


def _fit(parts: list[tuple[int, str]], width: int, fraction: float | None) -> str:
    room = max(width - 1, 1)
    keep = [(p, text) for p, text in parts if text]
    while True:
        fixed = [text for _, text in keep if text != _BAR]
        length = sum(map(len, fixed)) + 2 * (len(keep) - 1)
        has_bar = any(text == _BAR for _, text in keep)
        if length + (BAR_MIN + 2 if has_bar else 0) <= room or len(keep) == 1:
            break
        keep.remove(max(keep, key=lambda part: part[0]))  # the least useful part goes first
    bar_width = min(BAR_MAX, room - length - 2)
    out = []
    for _, text in keep:
        if text == _BAR:
            assert fraction is not None
            out.append(_bar(fraction, bar_width))
        else:
            out.append(text)
    return "  ".join(out)[:room].lstrip()


def _bar(fraction: float, width: int) -> str:
    inner = width - 2
    full = min(inner, int(fraction * inner))
    head = ">" if full < inner else ""
    return "[" + ("=" * full + head).ljust(inner) + "]"


def _of(done: int, total: int) -> str:
    """'12.0/40.0 MiB': both in the total's unit."""
    unit = size(total).split()[-1]
    if unit == "B":
        return f"{done:,}/{total:,} B"
    scale = 1024.0 ** (1 + ("KiB", "MiB", "GiB", "TiB").index(unit))
    return f"{done / scale:.1f}/{total / scale:.1f} {unit}"


def _rate(rates: Rates | None, c: SyncCounts) -> str:
    if rates is None:
        return ""
    files, nbytes = rates
    if c.bytes_to_copy or c.bytes:
        return f"{size(int(nbytes))}/s"
    return f"{files:,.0f} files/s"


def _eta(c: SyncCounts, rates: Rates | None) -> str:
    if rates is None:
        return ""
    files, nbytes = rates
    if c.bytes_to_copy and nbytes > 0:
        left = max(0, c.bytes_to_copy - c.bytes) / nbytes
    elif files > 0:
        left = max(0, c.to_copy - c.files) / files
    else:
        return ""
    s = int(left + 0.5)
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"ETA {s // 60}:{s % 60:02d}"


def summary(c: SyncCounts, seconds: float, unusable: int = 0) -> str:
    """The last line of a `sync` that ran to its end."""
    line = f"sync done: {c.files:,} files ({size(c.bytes)}) in {duration(seconds)}"
    if c.deleted:
        line += f", {c.deleted:,} deleted"
    line += f", {c.failed:,} failed"
    if unusable:
        line += f", {unusable} folder{'s' if unusable != 1 else ''} not served"
    return line + (" (see above)" if c.failed or unusable else "")


def interrupted(c: SyncCounts) -> str:
    """The last line of a `sync` stopped by Ctrl-C."""
    line = f"interrupted: {c.files:,} of {max(c.to_copy, c.files):,} files copied"
    return line + ("; the comparison had not finished" if c.comparing else "")


class RateMeter:
    """Files and bytes per second over the last RATE_WINDOW seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, files: int, nbytes: int) -> Rates | None:
        """Record the counts now; the rates, once there is half a second to judge by."""
        now = self.clock()
        self._samples.append((now, files, nbytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        then, files0, bytes0 = self._samples[0]
        if now - then < 0.5:
            return None
        return (files - files0) / (now - then), (nbytes - bytes0) / (now - then)


class Terminal(io.TextIOBase):
    """The terminal's stream (stderr) shared by the log lines and the bar, from any thread.

    Log lines are written whole above the bar: the bar's line is cleared, the text written,
    and the bar drawn again under it (at once if it was not drawn within REDRAW; else at the
    next `show`, a tenth of a second later at most).
    """

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._out = out
        self._clock = clock
        self._lock = threading.Lock()
        self._line = ""          # the bar, as last given to show()
        self._shown = False      # on screen now, on the cursor's line
        self._drawn_at = float("-inf")

    def isatty(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._out.fileno()

    def write(self, text: str) -> int:
        with self._lock:
            if self._shown:
                self._out.write(CLEAR)
                self._shown = False
            self._out.write(text)
            if self._line and text.endswith("\n") and self._clock() - self._drawn_at >= REDRAW:
                self._draw()
            self._out.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._out.flush()

    def show(self, line: str, now: bool = False) -> None:
        """Put `line` in the bar; drawn unless the bar was drawn less than REDRAW ago (`now`: anyway)."""
        with self._lock:
            self._line = line
            if now or self._clock() - self._drawn_at >= REDRAW:
                self._draw()
                self._out.flush()

    def clear(self) -> None:
        """Take the bar off the screen for good (before the summary, or an error message)."""
        with self._lock:
            if self._shown:
                self._out.write(CLEAR)
                self._out.flush()
            self._shown = False
            self._line = ""

    def width(self) -> int:
        # The terminal's own size first: shutil.get_terminal_size() asks stdout's, which may be a pipe.
        # COLUMNS still wins, as it does for shutil.
        env = os.environ.get("COLUMNS", "")
        if env.isdigit() and int(env) > 0:
            return int(env)
        try:
            columns = os.get_terminal_size(self._out.fileno()).columns
        except (OSError, ValueError, io.UnsupportedOperation):
            columns = 0
        return columns if columns > 0 else shutil.get_terminal_size().columns  # 0: a pty nobody sized

    def _draw(self) -> None:
        self._out.write("\r" + self._line + "\x1b[K")
        self._shown = True
        self._drawn_at = self._clock()


class SyncScreen:
    """What `sync` shows of its progress: the bar on a terminal (unless quiet), the summary
    there at the end, and the interrupted line on a terminal or not."""

    def __init__(self, out: TextIO, terminal: Terminal | None, *, label: str, bar: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.terminal = terminal
        self.label = label
        self.bar = bar and terminal is not None
        self._rates = RateMeter(clock)

    def update(self, c: SyncCounts, note: str = "") -> None:
        if not self.bar or self.terminal is None:
            return
        rates = self._rates.add(c.files, c.bytes)
        width = self.terminal.width()
        self.terminal.show(render(c, width, self.label, rates) if not note else note[:max(width - 1, 1)],
                           now=bool(note))

    def finish(self, c: SyncCounts, seconds: float, unusable: int) -> None:
        if self.terminal is not None:
            self.terminal.clear()
            self.out.write(summary(c, seconds, unusable) + "\n")
            self.out.flush()

    def interrupted(self, c: SyncCounts) -> None:
        if self.terminal is not None:
            self.terminal.clear()
        self.out.write(interrupted(c) + "\n")
        self.out.flush()
