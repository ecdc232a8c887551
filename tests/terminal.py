"""A command run on a real pseudo-terminal, and the screen it draws (what a person would see).

`Screen` is the least of a terminal emulator that the progress bar needs: printable text, line
feed, carriage return, backspace, erase to the end of the line (ESC [ K) and wrapping at the
width; other escape sequences (colours) are dropped. It keeps every line ever drawn, as a
scrollback would, so "the screen" is its list of lines. `PtyProcess` starts a command with
stdin, stdout and stderr on the slave side of a pty of a given size, in a session of its
own (so SIGINT to its process group is what Ctrl-C at that terminal sends), and feeds the
master side into a Screen on a thread.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Sequence
from typing import Any

from helpers import ENV, wait_until

_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")


class Screen:
    def __init__(self, width: int) -> None:
        self.width = width
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        self.raw = ""  # everything received, for failure messages

    def feed(self, text: str) -> None:
        self.raw += text
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = _CSI.match(text, i)
                if m is None:  # not a CSI sequence: drop the ESC alone
                    i += 1
                    continue
                if m.group(2) == "K" and m.group(1) in ("", "0"):
                    del self.lines[self.row][self.col:]
                i = m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._down()
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch.isprintable():
                if self.col >= self.width:  # the last column was written: this character wraps
                    self._down()
                    self.col = 0
                line = self.lines[self.row]
                line.extend(" " * (self.col - len(line)))
                if self.col < len(line):
                    line[self.col] = ch
                else:
                    line.append(ch)
                self.col += 1
            i += 1

    def _down(self) -> None:
        self.row += 1
        if self.row == len(self.lines):
            self.lines.append([])

    def text(self) -> list[str]:
        """The lines as shown, trailing blanks and empty last lines left out."""
        out = ["".join(line).rstrip() for line in self.lines]
        while out and not out[-1]:
            out.pop()
        return out


class PtyProcess:
    def __init__(self, argv: Sequence[str], *, width: int = 100, height: int = 30,
                 env: dict[str, str] | None = None) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        # The size comes from the terminal, as it would at a shell; not from the test's environment.
        full_env = {k: v for k, v in {**ENV, **(env or {})}.items() if k not in ("COLUMNS", "LINES")}
        full_env["TERM"] = "xterm"
        self.screen = Screen(width)
        self._lock = threading.Lock()
        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=full_env,
                                         start_new_session=True)
        finally:
            os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every holder of the slave side has closed it
                data = b""
            if not data:
                break
            with self._lock:
                self.screen.feed(decoder.decode(data))

    def lines(self) -> list[str]:
        with self._lock:
            return self.screen.text()

    def raw(self) -> str:
        with self._lock:
            return self.screen.raw

    def wait_screen(self, predicate: Callable[[list[str]], Any], timeout: float) -> list[str]:
        """The screen's lines once `predicate` holds for them (checked on one consistent copy)."""
        seen: list[list[str]] = [[]]

        def check() -> list[str] | None:
            seen[0] = self.lines()
            return seen[0] if predicate(seen[0]) else None
        return wait_until(check, timeout, lambda: "screen:\n" + "\n".join(seen[0][-30:]))

    def interrupt(self) -> None:
        """What Ctrl-C at the terminal does: SIGINT to the foreground process group (the session's)."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended and its last output is on the screen."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s; screen:\n" + "\n".join(self.lines()[-30:])) from None
        self._reader.join(10)  # workers may hold the slave a moment longer
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._reader.join(10)
        try:
            os.close(self._master)
        except OSError:
            pass
