"""watchdog observers and handlers: events into the ChangeQueue. Copies nothing.

Every event only means "re-check this path": a close is a hint, not a completeness signal
(an editor's save is a rename, a file moved in has no close, a lost event has nothing).
The handler puts paths straight into the ChangeQueue; what is not about one path (a
subtree to compare, a root lost, an overflow) goes to the Sink (WatchHealth). The handler
never lets an exception reach watchdog: it would kill the observer thread without a word.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import ObservedWatch

from foldermirror import faults
from foldermirror.config import FolderConfig
from foldermirror.paths import Excluder, relative
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.observer import make_observer
from foldermirror.pipeline.target_health import path_identity
from foldermirror.tempnames import LOCK_NAME, is_reserved

# Never IN_OPEN or IN_CLOSE_NOWRITE: watchdog's own directory walks (while it adds watches)
# would flood the queue on large trees, the overflow handler would walk again, and so on.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileAttribEvent, DirAttribEvent,
    FileClosedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent, DirMovedEvent,
]


class Sink(Protocol):
    def subtree(self, folder: str, path: str) -> None: ...
    def overflow(self) -> None: ...
    def root_lost(self, folder: str) -> None: ...
    def watch_suspect(self, folder: str, path: str) -> None: ...
    def handler_error(self, folder: str, error: BaseException) -> None: ...
    def observer_exited(self) -> None: ...
    def watchdog_log(self, level: int, message: str) -> None: ...
    def target_lost(self, folder: str, root_deleted: bool) -> None: ...
    def target_entry_lost(self, folder: str, path: str, is_dir: bool) -> None: ...


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: FolderConfig, changes: ChangeQueue, sink: Sink,
                 watch_below: Callable[[str], bool]) -> None:
        self.name = folder.name
        self.root = str(folder.source)
        self.delete = folder.delete
        self.settle = folder.settle
        self.max_delay = folder.max_delay
        self.excluded = Excluder(folder.excludes)
        self.changes = changes
        self.sink = sink
        self.watch_below = watch_below  # sets up inotify watches for a directory and what is under it

    def _changed(self, path: str, ready: bool) -> None:
        # A fresh event ends a retry backoff (not_before=0): its cause may be fixed.
        self.changes.touch(self.name, path, settle=self.settle, ready=ready, not_before=0.0, max_delay=self.max_delay)

    def dispatch(self, event: FileSystemEvent) -> None:
        if faults.ENABLED:
            faults.trip("observer_crash", os.fsdecode(event.src_path))
        try:
            if faults.ENABLED:
                faults.trip("handler_error", os.fsdecode(event.src_path))
            self._route(event)
        except Exception as exc:  # noqa: BLE001 - an escaping exception kills the observer
            self.sink.handler_error(self.name, exc)

    def _wanted(self, rel: str | None, is_dir: bool) -> bool:
        # inotify marks every event of a directory (IN_ISDIR), deletions and moves out
        # included, so the type is known here even for a path that is gone.
        return rel is not None and rel != "" and not self.excluded(rel, is_dir)  # "" is the root itself

    def _route(self, event: FileSystemEvent) -> None:
        src = relative(self.root, os.fsdecode(event.src_path))
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            if event.is_synthetic:
                return  # the move of the parent directory covers it
            dst = relative(self.root, os.fsdecode(event.dest_path)) if event.dest_path else None
            if isinstance(event, DirMovedEvent) and dst:
                self._check_dir(os.fsdecode(event.dest_path), dst)
            self._moved(src, dst, isinstance(event, DirMovedEvent))
            return
        if isinstance(event, DirCreatedEvent) and src and not event.is_synthetic:
            self._check_dir(os.fsdecode(event.src_path), src)
        if src == "" and isinstance(event, DirDeletedEvent):
            self.sink.root_lost(self.name)
            return
        if not self._wanted(src, event.is_directory):
            return
        assert src is not None
        if isinstance(event, DirCreatedEvent):
            self._changed(src, True)
            if not event.is_synthetic:
                # A directory made (or moved in from outside) may already hold entries that
                # were written before its watch existed. watchdog adds the watch before it
                # reports the directory, so a comparison from here on misses nothing, and
                # nothing depends on the library replaying those entries as events. A
                # synthetic event is one of that replay: its parent's comparison covers it.
                self.sink.subtree(self.name, src)
        elif isinstance(event, (FileClosedEvent, FileDeletedEvent, DirDeletedEvent)):
            self._changed(src, True)
        elif isinstance(event, DirAttribEvent):
            # A directory that could not be read had no watch and was not mirrored; a chmod
            # that makes it readable says so only through this event. Watch it first, then
            # compare it, so that nothing written in between is missed.
            self._changed(src, False)
            self.watch_below(os.fsdecode(event.src_path))
            self.sink.subtree(self.name, src)
        else:
            self._changed(src, False)

    def _check_dir(self, full: str, rel: str) -> None:
        """A directory event whose directory moved on before we heard of it.

        watchdog then sets up the watches below it under a path that is already stale:
        a directory left unwatched, or events reported under the wrong path. Measured with
        watchdog 7.1 under rename churn (see tests/daemon/test_faults.py); WatchHealth rebuilds the
        folder's watches once it is quiet and compares it.
        """
        if not os.path.isdir(full):
            self.sink.watch_suspect(self.name, rel)

    def _moved(self, src: str | None, dst: str | None, is_dir: bool) -> None:
        src_ok, dst_ok = self._wanted(src, is_dir), self._wanted(dst, is_dir)
        if src_ok and dst_ok and self.delete:
            assert src is not None and dst is not None
            self.changes.moved(self.name, src, dst, settle=self.settle, is_dir=is_dir)
            return
        if src_ok and self.delete:
            assert src is not None
            self._changed(src, True)
        if dst_ok:
            assert dst is not None
            self._changed(dst, True)
            if is_dir:
                self.sink.subtree(self.name, dst)


# A target root's own watch: deletions only (the root's too). Not renames: publishing a file
# is a rename, and those events would cost the observer's time in every burst.
TARGET_EVENT_FILTER: list[type[FileSystemEvent]] = [FileDeletedEvent, DirDeletedEvent]


class _TargetHandler(FileSystemEventHandler):
    """Entries deleted from the top of a target by someone else (`rm -rf target/*`).

    The daemon's own deletions are of paths the source no longer has (or of its temp
    files): looking at the source tells them apart. What is left was taken from the mirror
    behind the daemon's back and is mirrored again.
    """

    def __init__(self, folder: FolderConfig, sink: Sink) -> None:
        self.name = folder.name
        self.source = str(folder.source)
        self.target = str(folder.target)
        self.excluded = Excluder(folder.excludes)
        self.sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            path = os.fsdecode(event.src_path)
            if path == self.target:
                if isinstance(event, DirDeletedEvent):
                    self.sink.target_lost(self.name, True)
                return
            rel = relative(self.target, path)
            if rel == LOCK_NAME:
                self.sink.target_lost(self.name, False)  # emptied, lock file and all: take the lock again
                return
            if not rel or "/" in rel or is_reserved(rel) or self.excluded(rel, isinstance(event, DirDeletedEvent)):
                return
            try:
                st = os.lstat(os.path.join(self.source, rel))
            except OSError:
                return  # the source has no such entry either: nothing was lost
            self.sink.target_entry_lost(self.name, rel, stat.S_ISDIR(st.st_mode))
        except Exception as exc:  # noqa: BLE001 - an escaping exception kills the observer
            self.sink.handler_error(self.name, exc)


class _WatchdogLogBridge(logging.Handler):
    """watchdog tells of a queue overflow only through its logger, never to a handler."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if "overflow" in message and record.name.endswith("inotify_c"):
                self.sink.overflow()
            elif record.levelno >= logging.WARNING and "overflow" not in message:
                self.sink.watchdog_log(record.levelno, message)
        except Exception:  # noqa: BLE001 - logging must never raise into watchdog
            pass


@dataclass
class _Watched:
    folder: FolderConfig
    watch: ObservedWatch | None
    identity: tuple[int, int] | None
    lost: bool = False     # the root is gone (reported as missing)
    stale: bool = False    # the root's emitter stopped (root deleted): schedule again even at the same inode


class Watcher:
    """One inotify observer for all folders, rebuilt if its thread dies."""

    def __init__(self, sink: Sink, changes: ChangeQueue) -> None:
        self.sink = sink
        self.changes = changes
        self._lock = threading.Lock()
        self._folders: dict[str, _Watched] = {}
        self._targets: dict[str, tuple[FolderConfig, ObservedWatch | None]] = {}
        self._observer: Any = None
        self._bridge = _WatchdogLogBridge(sink)
        if faults.ENABLED and faults.value("no_replay") is not None:
            _switch_off_replay()
        wd_logger = logging.getLogger("watchdog")
        wd_logger.addHandler(self._bridge)
        wd_logger.setLevel(logging.WARNING)
        wd_logger.propagate = False

    def start(self, folders: tuple[FolderConfig, ...]) -> list[tuple[str, str]]:
        """Start watching; returns (folder, error) for folders that could not be watched."""
        with self._lock:
            self._start_observer()
            return [err for f in folders if (err := self._add(f)) is not None]

    def _start_observer(self) -> None:
        self._observer = make_observer()
        self._observer.start()
        # An observer thread killed by an exception says nothing: this one
        # tells the sink, whose main loop then restarts it, instead of polling alive().
        threading.Thread(target=self._await_exit, args=(self._observer,), name="observer-exit", daemon=True).start()

    def _await_exit(self, observer: Any) -> None:
        observer.join()
        self.sink.observer_exited()

    def _add(self, folder: FolderConfig) -> tuple[str, str] | None:
        identity = path_identity(str(folder.source))
        entry = _Watched(folder, None, identity, lost=identity is None)
        self._folders[folder.name] = entry
        if identity is None:
            return (folder.name, f"source {folder.source} does not exist")
        try:
            handler = _Handler(folder, self.changes, self.sink, functools.partial(self._watch_below, folder.name))
            entry.watch = self._observer.schedule(handler, str(folder.source),
                                                  recursive=True, event_filter=EVENT_FILTER)
        except OSError as exc:
            entry.lost = True
            return (folder.name, f"cannot watch {folder.source}: {_watch_error(exc)}")
        return None

    def _watch_below(self, name: str, path: str) -> bool:
        """Watch directory `path` and those under it if it has no watch yet (True: it had none).

        On the observer thread. watchdog has no public call for this, so it goes through its
        emitter's watch group; if those internals are not there (another watchdog version),
        the folder's watches are rebuilt once it is quiet, as after rename churn.
        """
        entry = self._folders.get(name)  # no lock: the main thread may hold it while stopping this thread
        emitters = getattr(self._observer, "_emitter_for_watch", None)
        emitter = emitters.get(entry.watch) if entry is not None and entry.watch is not None and emitters else None
        group = getattr(emitter, "_inotify", None)
        lock = getattr(group, "_lock", None)
        watched = getattr(group, "_active_callbacks_by_path", None)
        add = getattr(group, "_add_all_callbacks", None)
        if lock is None or watched is None or add is None:
            if entry is not None:
                self.sink.watch_suspect(name, relative(str(entry.folder.source), path) or "")
            return False
        key = os.fsencode(path)
        with lock:
            # watchdog files a directory it was refused (EACCES) under watch descriptor -1.
            if watched.get(key, -1) >= 0:
                return False
            try:
                add(key)
            except OSError:
                return False  # still unreadable, or gone again: the comparison says which
        return True

    def add(self, folder: FolderConfig) -> tuple[str, str] | None:
        with self._lock:
            return self._add(folder)

    def watch_target(self, folder: FolderConfig) -> None:
        """Watch the top of a folder's target (again: after it was deleted and made anew)."""
        with self._lock:
            self._watch_target(folder)

    def _watch_target(self, folder: FolderConfig) -> None:
        old = self._targets.pop(folder.name, None)
        if old is not None and old[1] is not None:
            self._unschedule(old[1])
        if folder.remote is not None:
            return  # on another machine: its link says whether it is there
        watch = None
        try:
            watch = self._observer.schedule(_TargetHandler(folder, self.sink), str(folder.target),
                                            recursive=False, event_filter=TARGET_EVENT_FILTER)
        except OSError:
            pass  # gone already: the periodic target check finds it
        self._targets[folder.name] = (folder, watch)

    def remove(self, name: str) -> None:
        with self._lock:
            target = self._targets.pop(name, None)
            if target is not None and target[1] is not None:
                self._unschedule(target[1])
            entry = self._folders.pop(name, None)
            if entry is not None and entry.watch is not None:
                self._unschedule(entry.watch)

    def _unschedule(self, watch: ObservedWatch) -> None:
        try:
            self._observer.unschedule(watch)
        except (KeyError, OSError):
            pass

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def restart(self) -> None:
        """Replace a dead observer and schedule every folder again."""
        with self._lock:
            old = self._observer
            folders = [w.folder for w in self._folders.values()]
            self._folders.clear()
            targets = [t[0] for t in self._targets.values()]
            self._targets.clear()
            try:
                old.stop()
            except Exception:  # noqa: BLE001 - it is already broken
                pass
            self._start_observer()
            for f in folders:
                self._add(f)
            for f in targets:
                self._watch_target(f)

    def mark_lost(self, name: str) -> None:
        with self._lock:
            if name in self._folders:
                self._folders[name].stale = True

    def check_roots(self) -> list[tuple[str, str]]:
        """Compare each root with what is watched; re-watch roots that came back.

        Returns (folder, state) pairs for roots whose state changed: "missing", "restored"
        (the same directory is back) or "replaced" (another directory stands at the path).
        """
        changes: list[tuple[str, str]] = []
        with self._lock:
            for name, entry in self._folders.items():
                now = path_identity(str(entry.folder.source))
                if now is None:
                    if not entry.lost:
                        entry.lost = True
                        changes.append((name, "missing"))
                    continue
                if entry.lost or entry.stale or now != entry.identity:
                    # A deleted root's emitter is gone for good and a renamed one reports
                    # the wrong paths, and scheduling the same path again is a silent no-op:
                    # unschedule, then schedule afresh.
                    if entry.watch is not None:
                        self._unschedule(entry.watch)
                    if self._add(entry.folder) is None:
                        changes.append((name, "restored" if now == entry.identity else "replaced"))
        return changes

    def identity(self, name: str) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the root as it was when its watch was set up."""
        with self._lock:
            entry = self._folders.get(name)
            return entry.identity if entry is not None else None

    def rewatch(self, name: str) -> str | None:
        """Drop a folder's watches and set them up afresh; returns an error or None."""
        with self._lock:
            entry = self._folders.get(name)
            if entry is None:
                return None
            if entry.watch is not None:
                self._unschedule(entry.watch)
            error = self._add(entry.folder)
            return error[1] if error is not None else None

    def watched(self, name: str) -> bool:
        with self._lock:
            entry = self._folders.get(name)
            return entry is not None and not entry.lost

    def stop(self) -> None:
        with self._lock:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)
                self._observer = None
        logging.getLogger("watchdog").removeHandler(self._bridge)


def _switch_off_replay() -> None:
    """Test-only: watchdog no longer reports the entries a new directory already holds."""
    from watchdog.observers import inotify

    setattr(inotify.InotifyWatchGroup, "_recursive_simulate", lambda self, src_path: [])  # noqa: B010
    setattr(inotify, "generate_sub_created_events", lambda src_path: iter(()))  # noqa: B010


def _watch_error(exc: OSError) -> str:
    # inotify reports its per-user limits as ENOSPC and EMFILE, which read like a full disk.
    if exc.errno == errno.ENOSPC:
        return "the inotify watch limit is reached: raise fs.inotify.max_user_watches"
    if exc.errno == errno.EMFILE:
        return "the inotify instance limit is reached: raise fs.inotify.max_user_instances"
    return exc.strerror or str(exc)
