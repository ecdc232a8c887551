"""Keeping the watches true: source and target roots, rebuilt watches, a dying observer.

`WatchHealth` is the watcher's sink for everything that is not a change to one path (the
handler puts those straight into the ChangeQueue), and the main loop's part for what must
be looked at again: a source root deleted, renamed away, unmounted or replaced; a target
root deleted, replaced or emptied; watches left stale by directories renamed before their
watches existed; an inotify reader thread that died; the kernel's queue overflowing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from foldermirror.catchup.compare import Request
from foldermirror.config import FolderConfig
from foldermirror.folderstate import FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.copier import describe
from foldermirror.pipeline.watcher import Watcher
from foldermirror.targetlock import TargetLock

ROOT_CHECK_INTERVAL = 1.0    # a missing or suspect root is looked at this often
ROOT_SAFETY_INTERVAL = 30.0  # a healthy one this often (see root_check_at)
REWATCH_QUIET = 2.0          # seconds without suspect directory events before watches are rebuilt
TARGET_QUIET = 1.0           # seconds without deletions in a target before what was taken from it is mended
# An observer that dies more often than this is rebuilt but no longer reported healthy,
# so systemd's watchdog restarts the whole service.
OBSERVER_DEATHS_MAX = 3
OBSERVER_DEATH_WINDOW = 60.0


@dataclass(frozen=True)
class Watching:
    """What the watcher can tell of itself (None: nothing watches, as under `sync`)."""

    alive: bool
    watched: Callable[[str], bool]


class WatchHealth:
    """See the module docstring. Sink methods run on the inotify reader thread; the rest on the main loop."""

    def __init__(self, *, log: Any, folders: Mapping[str, FolderState], changes: ChangeQueue,
                 request_catch_up: Callable[[str, str], None], request_walk: Callable[[Request], None],
                 locks: Mapping[str, TargetLock], relock: Callable[[FolderConfig], tuple[str | None, str]],
                 drop_folder: Callable[[str, str, str], None], wake: Callable[[], None],
                 watchdog_enabled: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock              # the time the reader thread's reports are stamped with
        self.folders = folders
        self.changes = changes
        self.request_catch_up = request_catch_up
        self.request_walk = request_walk
        self.locks = locks              # the targets' locks, by folder
        self.watchdog_enabled = watchdog_enabled  # systemd restarts us when we stop pinging it
        self.relock = relock            # take a re-made target's lock: (problem, fix) when refused
        self.drop_folder = drop_folder  # stop serving a folder: (name, problem, fix)
        self.wake = wake
        self.watcher: Watcher | None = None  # set by start(); None under `sync`
        self.overflows = 0
        self._last_root_check = 0.0
        self._deaths: deque[float] = deque()
        self._unstable = False
        self._targets_deleted: set[str] = set()  # by the reader thread: their roots' watches saw them go
        self._target_losses: dict[str, dict[str, bool]] = {}  # folder → top-level path → is a directory
        self._target_losses_at = 0.0
        self._losses_lock = threading.Lock()  # the reader thread adds losses, the main loop takes them

    def start(self, watcher: Watcher) -> None:
        """Watch every folder served; a folder that cannot be watched says why."""
        self.watcher = watcher
        for name, error in watcher.start(tuple(s.config for s in self.folders.values())):
            self.folders[name].missing = True
            self.log.error("folder_unwatched", folder=name, error=error)
        for name, state in self.folders.items():
            state.root_id = watcher.identity(name)
            watcher.watch_target(state.config)

    def add(self, f: FolderConfig) -> None:
        """Watch a folder a reload admitted."""
        assert self.watcher is not None
        error = self.watcher.add(f)
        state = self.folders[f.name]
        if error is not None:
            state.missing = True
            self.log.error("folder_unwatched", folder=f.name, error=error[1])
        else:
            state.root_id = self.watcher.identity(f.name)
        self.watcher.watch_target(f)

    # -- the main loop's part ---------------------------------------------------------
    def deadline(self) -> float | None:
        """When this part has something to do next (None: nothing until woken)."""
        if self.watcher is None:
            return None
        deadlines = [self.root_check_at()]
        deadlines += [s.rewatch_at for s in self.folders.values() if s.rewatch_at]
        if self._deaths:
            deadlines.append(self._deaths[0] + OBSERVER_DEATH_WINDOW)
        if self._target_losses:
            deadlines.append(self._target_losses_at)
        return min(deadlines)

    def root_check_at(self) -> float:
        """When the roots are next compared with what is watched.

        inotify reports a deleted or unmounted root (root_lost asks for a check at once) and
        a worker that finds its root gone or replaced says so (root_changed); a missing or
        suspect root is then looked at every ROOT_CHECK_INTERVAL until it is back. Nothing
        reports a root renamed away (watchdog drops IN_MOVE_SELF), a file system mounted over
        it or a parent made unreadable: every rescan looks, and this slow safety poll bounds
        how long a quiet folder can be watched at the wrong directory without a word.
        """
        troubled = any(s.missing or s.suspect or s.target_lost for s in self.folders.values())
        return self._last_root_check + (ROOT_CHECK_INTERVAL if troubled else ROOT_SAFETY_INTERVAL)

    def tick(self, now: float, rescan: bool) -> None:
        if self.watcher is None:
            return
        if not self.watcher.alive():
            self._deaths.append(now)
            self.watcher.restart()
            self.log.error("watcher_restarted", reason="observer thread died",
                           deaths=self._recent_deaths(now), window_s=OBSERVER_DEATH_WINDOW)
            for name, state in self.folders.items():
                self._adopt_root(name, state)
                self.request_catch_up(name, "watch_restored")
        if rescan or now >= self.root_check_at():
            self._last_root_check = now
            self._check_roots()
            self._check_targets()
        self._mend_targets(now)
        self._rewatch(now)

    def stable(self, now: float) -> bool:
        """False while the observer died more than OBSERVER_DEATHS_MAX times in the window."""
        deaths = self._recent_deaths(now)
        unstable = deaths > OBSERVER_DEATHS_MAX
        if unstable and not self._unstable:
            action = ("watchdog pings stop, so systemd restarts the service" if self.watchdog_enabled
                      else "no watchdog is configured (WatchdogSec=), so it is only rebuilt again")
            self.log.error("observer_unstable", deaths=deaths, window_s=OBSERVER_DEATH_WINDOW,
                           error=f"the file system observer died {deaths} times in {OBSERVER_DEATH_WINDOW:g}s",
                           action=action)
        elif not unstable and self._unstable:
            self.log.info("observer_stable", deaths=deaths, window_s=OBSERVER_DEATH_WINDOW)
        self._unstable = unstable
        return not unstable and (self.watcher is None or self.watcher.alive())

    def problems(self) -> list[str]:
        """For the status line: what makes the watches unhealthy now."""
        if self._unstable:
            return [f"unhealthy: the observer died {len(self._deaths)} times in {OBSERVER_DEATH_WINDOW:g}s"]
        return []

    def watching(self) -> Watching | None:
        """What the read model shows of the watcher; None before it starts (and under `sync`)."""
        return None if self.watcher is None else Watching(alive=self.watcher.alive(), watched=self.watcher.watched)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def _recent_deaths(self, now: float) -> int:
        while self._deaths and now - self._deaths[0] > OBSERVER_DEATH_WINDOW:
            self._deaths.popleft()
        return len(self._deaths)

    def _check_roots(self) -> None:
        assert self.watcher is not None
        for name, state in self.watcher.check_roots():
            folder = self.folders.get(name)
            if folder is None:
                continue
            # Pending paths were seen in a folder that is no longer there: drop them, the
            # comparison once it is back (under the mass-delete guard) decides instead.
            self.changes.forget(name)
            if state == "missing":
                folder.missing = True
                self.log.error("source_missing", folder=name, path=str(folder.config.source),
                               error="the source folder is gone or unreadable; nothing is deleted from the "
                                     "target until it is back")
            else:
                folder.missing = False
                folder.suspect = False
                folder.root_id = self.watcher.identity(name)
                # "replaced": another directory now stands at the path (a new folder, or the
                # empty mount point of an unmounted file system; the guard judges that).
                self.log.info("source_restored", folder=name, path=str(folder.config.source),
                              same_folder=state == "restored")
                self.request_catch_up(name, "watch_restored")
        for name, folder in self.folders.items():
            # A worker saw the root gone or replaced but nothing changed by the time we
            # looked (a brief outage): compare again what it set aside.
            if folder.suspect and self.watcher.watched(name):
                folder.suspect = False
                self._adopt_root(name, folder)
                self.request_catch_up(name, "source_recheck")

    def _check_targets(self) -> None:
        """Make a target root again that was deleted, replaced or emptied, and compare its folder.

        Its own watch reports a deleted root at once (target_lost); a root replaced by a
        mount or unmount is found by this check on the roots' schedule.
        """
        assert self.watcher is not None
        deleted, self._targets_deleted = self._targets_deleted, set()
        for name, state in list(self.folders.items()):
            f = state.config
            if f.remote is not None:
                continue  # its link's supervisor (remote/links.py) watches over it
            now = state.target.identity()
            lock = self.locks.get(name)
            intact = lock is None or lock.intact()
            if now is not None and now == state.target_id and name not in deleted and intact:
                continue
            if now is None or name in deleted:
                what = "was deleted"
            elif now != state.target_id:
                what = "was replaced by another directory"
            else:
                what = "was emptied (its lock file is gone)"
            try:
                state.target.remake()
            except OSError as exc:
                if not state.target_lost:
                    state.target_lost = True
                    self.log.error("target_lost", folder=name, path=str(f.target),
                                   error=f"the target folder {what} and cannot be made again: {describe(exc)}",
                                   fix="make the target's parent folder exist and writable for the service user; "
                                       f"it is tried again every {ROOT_CHECK_INTERVAL:g}s")
                continue
            problem, fix = self.relock(f)  # another daemon may have taken the new one
            if problem is not None:
                self.drop_folder(name, problem, fix)
                continue
            if not state.target_lost:
                self.log.error("target_lost", folder=name, path=str(f.target),
                               error=f"the target folder {what} while the daemon was mirroring into it",
                               action="made it again; the folder is compared and mirrored anew",
                               fix="nothing to do if it was removed on purpose; otherwise find what removed it "
                                   "(a clean-up job, a mount that went away)")
            else:
                self.log.info("target_restored", folder=name, path=str(f.target))
            state.target_lost = False
            state.target_id = state.target.identity()
            self.watcher.watch_target(f)
            self.request_catch_up(name, "target_restored")

    def _mend_targets(self, now: float) -> None:
        """Mirror again what was deleted from the top of a target behind the daemon's back."""
        with self._losses_lock:
            if not self._target_losses or now < self._target_losses_at:
                return
            losses, self._target_losses = self._target_losses, {}
        if any("" in paths for paths in losses.values()):
            self._check_targets()  # a lock file deleted: the target was emptied
        for folder, paths in losses.items():
            state = self.folders.get(folder)
            if state is None or state.target_lost or folder in self._targets_deleted or "" in paths:
                continue  # gone or emptied as a whole: its comparison covers everything
            for path, is_dir in paths.items():
                if is_dir:  # its contents went with it
                    self.request_walk(Request(folder, path, "target_changed", ready=True))
                else:
                    self.changes.touch(folder, path, settle=state.config.settle, ready=True)

    def _adopt_root(self, name: str, state: FolderState) -> None:
        """Take the root identity the watcher now watches; work seen under another is stale."""
        assert self.watcher is not None
        root_id = self.watcher.identity(name)
        if root_id != state.root_id:
            self.changes.forget(name)
            state.root_id = root_id

    def _rewatch(self, now: float) -> None:
        assert self.watcher is not None
        for name, state in self.folders.items():
            if not state.rewatch_at or now < state.rewatch_at:
                continue
            count, state.rewatch_at, state.rewatch_paths = state.rewatch_paths, 0.0, 0
            error = self.watcher.rewatch(name)
            if error is not None:
                self.log.error("folder_unwatched", folder=name, error=error)
                continue
            self._adopt_root(name, state)
            self.log.info("watch_rebuilt", folder=name, suspect_events=count,
                          reason="directories moved before their watches were set up")
            self.request_catch_up(name, "watch_rebuilt")

    # -- any thread: the roots may have changed -------------------------------------------
    def check_roots_soon(self) -> None:
        """A source root may be gone or replaced; the main loop looks on its next pass."""
        self._last_root_check = 0.0
        self.wake()

    # -- the watcher's sink (the inotify reader thread) -------------------------------------------
    def subtree(self, folder: str, path: str) -> None:
        self.request_walk(Request(folder, path, "subtree", ready=False, only_unknown=True,
                                  since=self.changes.clock()))

    def overflow(self) -> None:
        self.log.warning("overflow_rescan", error="the kernel's inotify queue overflowed and events were lost",
                         fix="nothing to do: every folder is compared again; raise fs.inotify.max_queued_events "
                             "if this happens often")
        self.overflows += 1
        for name in list(self.folders):
            self.request_catch_up(name, "overflow")

    def root_lost(self, folder: str) -> None:
        if self.watcher is not None:
            self.watcher.mark_lost(folder)
        self.check_roots_soon()

    def target_lost(self, folder: str, root_deleted: bool) -> None:
        if root_deleted:  # marked, not only looked at: a root made again at once may get the old inode number
            self._targets_deleted.add(folder)
            self.check_roots_soon()
        else:  # its lock file went: looked at once the target is quiet (see target_entry_lost)
            self.target_entry_lost(folder, "", True)

    def target_entry_lost(self, folder: str, path: str, is_dir: bool) -> None:
        # Mended once the target has been quiet for TARGET_QUIET: mending each entry at once
        # would fight an `rm -rf` of the whole target that is still under way.
        with self._losses_lock:
            self._target_losses.setdefault(folder, {})[path] = is_dir
            self._target_losses_at = self.clock() + TARGET_QUIET
        self.wake()

    def watch_suspect(self, folder: str, path: str) -> None:
        state = self.folders.get(folder)
        if state is not None:
            state.rewatch_paths += 1
            state.rewatch_at = self.clock() + REWATCH_QUIET
            self.wake()

    def observer_exited(self) -> None:
        self.wake()  # the main loop restarts an observer that died

    def handler_error(self, folder: str, error: BaseException) -> None:
        self.log.error("watch_handler_error", folder=folder, error=repr(error))
        self.request_catch_up(folder, "handler_error")

    def watchdog_log(self, level: int, message: str) -> None:
        self.log.warning("watch_warning", error=message)
