"""structlog set-up: JSON lines off a TTY (journald), a readable console on a TTY.

Also what makes a log line something to act on: a `fix` for every warning and error
(`FIXES`, unless the call gave one), repeated failures folded into one line with a count
(`Repeats`), and debug lines that follow single paths through the pipeline (`Tracer`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# What to do about each warning and error that has one fix whatever its cause. Lines whose
# fix depends on the cause (mirror_failed: the errno) pass `fix=` themselves.
FIXES: dict[str, str] = {
    "remote_retry": "the daemon keeps reconnecting with back-off; the fix of the remote_down line says what "
                    "to check",
    "remote_transfer_failed": "nothing to do if the host is coming back; otherwise see the remote_down line",
    "remote_backlog_dropped": "nothing to do: the folder is compared with its target once the host is back",
    "reconcile_deferred": "nothing to do: the comparison runs once the host is back (remote_up)",
    "folder_unwatched": "make the source folder exist and readable by the service user; it is watched again "
                        "as soon as it is back",
    "source_missing": "restore or re-mount the source folder; mirroring resumes by itself when it is back",
    "source_unreadable": "give the service user read and execute permission on that directory (chmod, chown "
                         "or an ACL); the next rescan mirrors it",
    "reconcile_failed": "check that the source and target folders are readable by the service user; the next "
                        "rescan tries again",
    "file_skipped": "nothing to do: FIFOs, sockets and devices are not mirrored",
    "watcher_restarted": "nothing to do: every folder is compared again; report it if it happens often",
    "watch_handler_error": "nothing to do: the folder is compared again; please report this bug with this line",
    "watch_warning": "nothing to do unless it repeats; a periodic rescan covers what the watch missed",
    "worker_lost": "nothing to do if it is rare; if it repeats, look for the OOM killer in journalctl -k and "
                   "lower workers",
    "config_invalid": "correct the file (foldermirror check --config FILE shows the error), then reload again",
    "mirror_failed": "see the error: the path in the source or in the target needs attention",
    "mirror_failed_repeated": "see the error: the paths in the source or in the target need attention",
    "internal_error": "please report this bug with this line; the next rescan compares the path again",
    "observer_unstable": "nothing to do under systemd: it restarts the service; otherwise restart it and "
                         "report this bug with the watch_handler_error or watcher_restarted lines before it",
    "overflow_rescan": "nothing to do: every folder is compared again; raise fs.inotify.max_queued_events if "
                       "this happens often",
}


def _advise(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if method in ("warning", "error", "critical") and "fix" not in event:
        fix = FIXES.get(event.get("event", ""))
        if fix:
            event["fix"] = fix
    return event


# One encoder for every line, made once: json.dumps (and JSONEncoder.encode) build a new
# one per call, a third of the cost of a line. Where CPython has no C encoder, the Python one.
_MAKE_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
_C_ENCODER = (_MAKE_C_ENCODER(None, repr, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
              if _MAKE_C_ENCODER is not None else None)
_ENCODER = json.JSONEncoder(default=repr)


def _json_line(event: dict[str, Any], **_: Any) -> str:
    if _C_ENCODER is None:
        return _ENCODER.encode(event)
    return "".join(_C_ENCODER(event, 0))


class _Stamp:
    """ISO 8601 UTC to the microsecond, as structlog's TimeStamper(fmt="iso", utc=True) writes
    it but always with 6 digits, and the date and time of day formatted once per second."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one attribute: threads log at once

    def __call__(self) -> str:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        return f"{prefix}.{ns // 1000:06d}Z"


_stamp = _Stamp()


def _lead(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Adds level and timestamp and puts event, level and timestamp first: a reader (or `cut`)
    sees what a line is before its data."""
    return {"event": event.pop("event", ""), "level": event.pop("level", method),
            "timestamp": event.pop("timestamp", None) or _stamp(), **event}


# syslog priorities, as journald reads them from a `<N>` prefix on a stream line
# (SyslogLevelPrefix=, on by default): `journalctl -p warning` then filters, and journald's
# rate limit counts each priority apart, so an info flood cannot crowd out the errors.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2,
              "fatal": 2}


def writes_to_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM is its device:inode).

    The variable alone is not enough: it is inherited by children whose stderr was redirected
    elsewhere (a pipe, a file), where a `<6>` would be garbage.
    """
    named = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = named.partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.StringIO and closed streams have no descriptor
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


class _LineWriter:
    """structlog's output: one line per event, written at once, except on a thread inside
    `batch()`: its lines go out together when the batch ends (one write, not one per file).
    With `priorities`, each line starts with its journald priority prefix."""

    def __init__(self, stream: TextIO, priorities: bool = False) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._held: list[str] = []
        self._local = threading.local()
        self._prefix = {name: f"<{n}>" if priorities else "" for name, n in PRIORITIES.items()}

    def _line(self, method: str, message: str) -> None:
        line = f"{self._prefix.get(method, '')}{message}\n"
        with self._lock:
            if getattr(self._local, "depth", 0):
                self._held.append(line)
                return
            self._stream.write(line)
            self._stream.flush()

    # Methods, not partialmethod(_line, …): that builds a new partial on every line.
    def debug(self, message: str) -> None:
        self._line("debug", message)

    def info(self, message: str) -> None:
        self._line("info", message)

    def warning(self, message: str) -> None:
        self._line("warning", message)

    def error(self, message: str) -> None:
        self._line("error", message)

    def critical(self, message: str) -> None:
        self._line("critical", message)

    log = msg = info
    warn = warning
    exception = error
    fatal = critical

    @contextmanager
    def batch(self) -> Iterator[None]:
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if not self._local.depth:
                with self._lock:
                    if self._held:
                        self._stream.write("".join(self._held))
                        self._held.clear()
                        self._stream.flush()


_writer: _LineWriter | None = None


@contextmanager
def batch() -> Iterator[None]:
    """Hold this thread's log lines until the block ends, then write them at once."""
    writer = _writer
    if writer is None:
        yield
        return
    with writer.batch():
        yield


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog to `stream` (stderr by default) as JSON or console lines."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    # The console renderer pads event names into a column and colours the level on a TTY.
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False) if use_console
                     else structlog.processors.JSONRenderer(serializer=_json_line))
    global _writer
    writer = _writer = _LineWriter(out, priorities=writes_to_journal(out))
    # A JSON line is the per-file cost of the main process: one processor adds the level
    # and the time and orders the keys (structlog's add_log_level and TimeStamper, then a
    # reordering, cost twice as much).
    stamping = ([structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
                if use_console else [_lead])
    structlog.configure(
        processors=[*stamping, _advise, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: writer,
        # A logger from get_logger() binds once, not on every call (a third of a line's cost);
        # configure_logging() again takes effect for loggers got after it.
        cache_logger_on_first_use=True,
    )


def get_logger() -> Any:
    return structlog.get_logger("foldermirror")


# -- repeated failures ---------------------------------------------------------------
RepeatKey = tuple[str, str]  # (folder, error)


@dataclass
class Repeat:
    """A run of identical failures after the first one of its window was logged."""

    key: RepeatKey
    fields: dict[str, Any]
    started: float
    count: int = 0
    paths: list[str] = field(default_factory=list)
    last_path: str = ""


class Repeats:
    """Folds failures with the same key (folder and error) within `window` seconds.

    The first of a window is logged in full; the rest are only counted, and `due()` hands
    back one summary per window that saw more (then logged as `…_repeated` with a count).
    """

    SAMPLE = 5

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._open: dict[RepeatKey, Repeat] = {}
        self._due: list[Repeat] = []
        self._lock = threading.Lock()

    def admit(self, key: RepeatKey, path: str, **fields: Any) -> bool:
        """True: log this one in full. False: it was counted into the running window."""
        now = self.clock()
        with self._lock:
            run = self._open.get(key)
            if run is None or now - run.started >= self.window:
                if run is not None and run.count:
                    self._due.append(run)
                self._open[key] = Repeat(key, fields, now)
                return True
            run.count += 1
            run.last_path = path
            if len(run.paths) < self.SAMPLE and path not in run.paths:
                run.paths.append(path)
            return False

    def next_due(self) -> float | None:
        """When `due()` next has something to hand back (None: not before another failure)."""
        with self._lock:
            if self._due:
                return self.clock()
            return min((run.started + self.window for run in self._open.values() if run.count), default=None)

    def due(self, flush: bool = False) -> list[Repeat]:
        """Windows that ended (all of them with `flush`) and folded at least one failure."""
        now = self.clock()
        with self._lock:
            out, self._due = self._due, []
            for key, run in list(self._open.items()):
                if flush or now - run.started >= self.window:
                    del self._open[key]
                    if run.count:
                        out.append(run)
        return out


# -- following one path through the pipeline -------------------------------------------
class Tracer:
    """Debug lines (`pipeline_step`) for a path's way: event → ready → dispatched → done.

    With `globs` (log.trace): every path that matches one of them. Without: one path at a
    time — the first one seen is followed until it is done, and the next one is picked at
    most once per `every` seconds — so a busy folder at debug level does not flood the log.
    """

    GIVE_UP = 60.0  # a followed path that never reports done (coalesced, folder removed) is dropped

    def __init__(self, log: Any, globs: tuple[str, ...] = (), every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.globs = globs
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self._followed: dict[tuple[str, str], _Follow] = {}
        self._next_pick = 0.0

    def _matches(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g) for g in self.globs)

    def step(self, stage: str, folder: str, path: str, **fields: Any) -> None:
        """Record that (folder, path) reached `stage`; logs only for followed paths."""
        key = (folder, path)
        now = self.clock()
        with self._lock:
            f = self._followed.get(key)
            if f is None:
                if stage != "event" or not self._pick(path, now):
                    return
                f = self._followed[key] = _Follow(now)
            elif stage == "event":
                f.events += 1  # coalesced into the pending change: counted, not logged
                return
            if stage == "done":
                del self._followed[key]
                if not self.globs:
                    self._next_pick = now + self.every
        self.log.debug("pipeline_step", stage=stage, folder=folder, path=path,
                       since_ms=round((now - f.since) * 1000, 3), events=f.events, **fields)

    def _pick(self, path: str, now: float) -> bool:
        if self.globs:
            return self._matches(path)
        for key, f in list(self._followed.items()):
            if now - f.since > self.GIVE_UP:
                del self._followed[key]
        return not self._followed and now >= self._next_pick

    def queue_hook(self, stage: str, key: tuple[str, str]) -> None:
        """For ChangeQueue.tracer (called under its lock): nearly free for paths not followed."""
        if stage == "event" or key in self._followed:
            self.step(stage, key[0], key[1])


@dataclass
class _Follow:
    since: float
    events: int = 1
