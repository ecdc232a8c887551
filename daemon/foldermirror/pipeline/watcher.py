"""The watcher: inotify events (pipeline/intake.py) into the ChangeQueue. Copies nothing.

Every event only means "re-check this path": a close is a hint, not a completeness signal
(an editor's save is a rename, a file moved in has no close, a lost event has nothing).
The handler puts paths straight into the ChangeQueue; what is not about one path (a
subtree to compare, a root lost, an overflow) goes to the Sink (WatchHealth). The handler
never lets an exception reach the intake: it would end the reader thread (which WatchHealth
then replaces, comparing every folder).
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
from typing import Protocol

from foldermirror import faults
from foldermirror.config import FolderConfig
from foldermirror.errors import StartupError
from foldermirror.paths import Excluder, relative
from foldermirror.pipeline import intake
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.intake import SOURCE_MASK, TARGET_MASK, Group, Intake, Kind
from foldermirror.pipeline.target_health import path_identity
from foldermirror.tempnames import LOCK_NAME, is_reserved


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


class _Handler:
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

    def handle(self, kind: Kind, path: bytes, is_dir: bool, dest: bytes | None) -> None:
        if faults.ENABLED:
            faults.trip("observer_crash", os.fsdecode(path))
        try:
            if faults.ENABLED:
                faults.trip("handler_error", os.fsdecode(path))
            self._route(kind, os.fsdecode(path), is_dir, dest)
        except Exception as exc:  # noqa: BLE001 - an escaping exception ends the reader thread
            self.sink.handler_error(self.name, exc)

    def _wanted(self, rel: str | None, is_dir: bool) -> bool:
        # inotify marks every event of a directory (IN_ISDIR), deletions and moves out
        # included, so the type is known here even for a path that is gone.
        return rel is not None and rel != "" and not self.excluded(rel, is_dir)  # "" is the root itself

    def _route(self, kind: Kind, full: str, is_dir: bool, dest: bytes | None) -> None:
        src = relative(self.root, full)
        if kind is Kind.MOVED:
            assert dest is not None
            full_dst = os.fsdecode(dest)
            dst = relative(self.root, full_dst)
            if is_dir and dst:
                self._check_dir(full_dst, dst)
            self._moved(src, dst, is_dir)
            return
        if kind is Kind.ROOT_DELETED:
            self.sink.root_lost(self.name)
            return
        if kind is Kind.CREATED and is_dir and src:
            self._check_dir(full, src)
        if not self._wanted(src, is_dir):
            return
        assert src is not None
        if kind is Kind.CREATED and is_dir:
            self._changed(src, True)
            # A directory made (or moved in from outside) may already hold entries that were
            # written before its watch existed. The intake adds the watches before it reports
            # the directory, so a comparison from here on misses nothing (the entries it
            # found meanwhile follow as FOUND: known early, they go in the next batches).
            self.sink.subtree(self.name, src)
        elif kind is Kind.CLOSED or kind is Kind.DELETED:
            self._changed(src, True)
        elif kind is Kind.ATTRIB and is_dir:
            # A directory that could not be read had no watch and was not mirrored; a chmod
            # that makes it readable says so only through this event. Watch it first, then
            # compare it, so that nothing written in between is missed.
            self._changed(src, False)
            self.watch_below(full)
            self.sink.subtree(self.name, src)
        else:
            self._changed(src, False)

    def _check_dir(self, full: str, rel: str) -> None:
        """A directory event whose directory moved on before we heard of it.

        watchdog's watch group then sets up the watches below it under a path that is already
        stale: a directory left unwatched, or events reported under the wrong path. Measured
        with watchdog 7.1 under rename churn (see tests/daemon/test_faults.py); WatchHealth rebuilds the
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


class _TargetHandler:
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

    def handle(self, kind: Kind, path_bytes: bytes, is_dir: bool, dest: bytes | None) -> None:
        try:
            if kind is Kind.ROOT_DELETED:
                self.sink.target_lost(self.name, True)
                return
            path = os.fsdecode(path_bytes)
            rel = relative(self.target, path)
            if rel == LOCK_NAME:
                self.sink.target_lost(self.name, False)  # emptied, lock file and all: take the lock again
                return
            if not rel or "/" in rel or is_reserved(rel) or self.excluded(rel, is_dir):
                return
            try:
                st = os.lstat(os.path.join(self.source, rel))
            except OSError:
                return  # the source has no such entry either: nothing was lost
            self.sink.target_entry_lost(self.name, rel, stat.S_ISDIR(st.st_mode))
        except Exception as exc:  # noqa: BLE001 - an escaping exception ends the reader thread
            self.sink.handler_error(self.name, exc)


class _WatchdogLogBridge(logging.Handler):
    """watchdog's warnings (a watch it could not add, say) reach the JSON lines, not stderr."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                self.sink.watchdog_log(record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise into watchdog
            pass


@dataclass
class _Watched:
    folder: FolderConfig
    watch: Group | None
    identity: tuple[int, int] | None
    lost: bool = False     # the root is gone (reported as missing)
    stale: bool = False    # the root was deleted (its watches with it): schedule again even at the same inode


class Watcher:
    """One inotify reader for all folders, replaced if its thread dies."""

    def __init__(self, sink: Sink, changes: ChangeQueue) -> None:
        if not intake.fits():
            from watchdog.version import VERSION_STRING

            raise StartupError(f"watchdog {VERSION_STRING}'s inotify internals are not those foldermirror "
                               "was built on: install watchdog 7.1 (pip install 'watchdog==7.1.*')")
        self.sink = sink
        self.changes = changes
        self._lock = threading.Lock()
        self._folders: dict[str, _Watched] = {}
        self._targets: dict[str, tuple[FolderConfig, Group | None]] = {}
        self._intake: Intake | None = None
        self._bridge = _WatchdogLogBridge(sink)
        wd_logger = logging.getLogger("watchdog")
        wd_logger.addHandler(self._bridge)
        wd_logger.setLevel(logging.WARNING)
        wd_logger.propagate = False

    def start(self, folders: tuple[FolderConfig, ...]) -> list[tuple[str, str]]:
        """Start watching; returns (folder, error) for folders that could not be watched."""
        with self._lock:
            self._start_intake()
            return [err for f in folders if (err := self._add(f)) is not None]

    def _start_intake(self) -> None:
        self._intake = Intake(on_overflow=self.sink.overflow)
        self._intake.start()
        # A reader thread ended by an exception says nothing: this one tells the sink,
        # whose main loop then replaces it, instead of polling alive().
        threading.Thread(target=self._await_exit, args=(self._intake,), name="inotify-exit", daemon=True).start()

    def _await_exit(self, reader: Intake) -> None:
        reader.join()
        self.sink.observer_exited()

    def _add(self, folder: FolderConfig) -> tuple[str, str] | None:
        assert self._intake is not None
        identity = path_identity(str(folder.source))
        entry = _Watched(folder, None, identity, lost=identity is None)
        self._folders[folder.name] = entry
        if identity is None:
            return (folder.name, f"source {folder.source} does not exist")
        try:
            handler = _Handler(folder, self.changes, self.sink, functools.partial(self._watch_below, folder.name))
            entry.watch = self._intake.schedule(str(folder.source), handler, recursive=True, mask=SOURCE_MASK)
        except OSError as exc:
            entry.lost = True
            return (folder.name, f"cannot watch {folder.source}: {_watch_error(exc)}")
        return None

    def _watch_below(self, name: str, path: str) -> bool:
        """Watch directory `path` and those under it if it has no watch yet (True: it had none).

        On the reader thread. A folder still being scheduled has no group yet: its watches
        are rebuilt once it is quiet, as after rename churn.
        """
        entry = self._folders.get(name)  # no lock: the main thread may hold it while stopping this thread
        if entry is None:
            return False
        if entry.watch is None:
            self.sink.watch_suspect(name, relative(str(entry.folder.source), path) or "")
            return False
        return entry.watch.watch_below(os.fsencode(path))

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
        assert self._intake is not None
        try:
            watch = self._intake.schedule(str(folder.target), _TargetHandler(folder, self.sink),
                                          recursive=False, mask=TARGET_MASK)
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

    def _unschedule(self, watch: Group) -> None:
        assert self._intake is not None
        try:
            self._intake.unschedule(watch)
        except (KeyError, OSError):
            pass

    def alive(self) -> bool:
        return self._intake is not None and self._intake.is_alive()

    def restart(self) -> None:
        """Replace a dead reader and schedule every folder again."""
        with self._lock:
            old = self._intake
            folders = [w.folder for w in self._folders.values()]
            self._folders.clear()
            targets = [t[0] for t in self._targets.values()]
            self._targets.clear()
            try:
                if old is not None:
                    old.stop()
            except Exception:  # noqa: BLE001 - it is already broken
                pass
            self._start_intake()
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
                    # A deleted root's watches are gone for good and a renamed one's report
                    # the wrong paths: unschedule, then schedule afresh.
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
            if self._intake is not None:
                self._intake.stop()
                self._intake.join(timeout=5)
                self._intake = None
        logging.getLogger("watchdog").removeHandler(self._bridge)


def _watch_error(exc: OSError) -> str:
    # inotify reports its per-user limits as ENOSPC and EMFILE, which read like a full disk.
    if exc.errno == errno.ENOSPC:
        return "the inotify watch limit is reached: raise fs.inotify.max_user_watches"
    if exc.errno == errno.EMFILE:
        return "the inotify instance limit is reached: raise fs.inotify.max_user_instances"
    return exc.strerror or str(exc)
