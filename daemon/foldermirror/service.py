"""The main thread: wires config, logs, pool, watcher and reconciler; signals; lifecycle.

Service owns start-up, the main loop (its deadlines, the root and watch checks, sd_notify
status and watchdog pings), reload and shutdown, and is the watcher's sink. The parts it
wires own the rest: catch-ups and the reconcile walk (catchup.py), worker outcomes into
log lines, counters and retries (results.py), the status socket, metrics and folded
failures (operator_view.py).

Signal handlers only record the signal; the main loop acts on it (as gunicorn's arbiter).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from foldermirror import checks, targetlock
from foldermirror.catchup.tracking import CatchUps
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.config import DEFAULT_RESCAN, Config, FolderConfig, load_config
from foldermirror.view.control import ControlServer
from foldermirror.pipeline.copier import _describe as copier_describe
from foldermirror.errors import EXIT_FAILURE, EXIT_OK, ConfigError, FoldermirrorError, StartupError
from foldermirror.folderstate import FolderState
from foldermirror.logs import get_logger
from foldermirror.notify import Notifier, watchdog_interval
from foldermirror.view.operator import OperatorView
from foldermirror.paths import Excluder
from foldermirror.pipeline.pool import FolderSpec, WorkerPool, run_dispatcher
from foldermirror.catchup.compare import Request
from foldermirror.pipeline.results import ResultRecorder
from foldermirror.targetlock import TargetLock, TargetLocked
from foldermirror.pipeline.watcher import Watcher, path_identity

TICK = 0.2                   # the main loop's pace while there is work; idle, it sleeps (see _next_wait)
ROOT_CHECK_INTERVAL = 1.0    # a missing or suspect source root is looked at this often
ROOT_SAFETY_INTERVAL = 30.0  # a healthy one this often (see _root_check_at)
WAKE = 0                     # on the signal queue: not a signal, "look again"
TARGET_QUIET = 1.0           # seconds without deletions in a target before what was taken from it is mended
REWATCH_QUIET = 2.0       # seconds without suspect directory events before watches are rebuilt
PROGRESS_INTERVAL = 1.0
# An observer that dies more often than this is rebuilt but no longer reported healthy,
# so systemd's watchdog restarts the whole service.
OBSERVER_DEATHS_MAX = 3
OBSERVER_DEATH_WINDOW = 60.0
UNUSABLE_FIX = "the other folders are served; fix this, then reload (systemctl reload foldermirror, or SIGHUP)"
UNUSABLE_FIX_SYNC = "the other folders are synced; fix this and run sync again"


@dataclass
class Service:
    config: Config
    once: bool = False            # `sync`: one catch-up pass, no watching, no retries
    progress_tty: bool = False    # `sync` on a terminal: a progress line instead of log lines
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        self.log = get_logger()
        self.instance = os.urandom(4).hex()
        self.changes = ChangeQueue()
        self.folders: dict[str, FolderState] = {}
        self.unusable: dict[str, FolderConfig] = {}
        self.locks: dict[str, TargetLock] = {}  # one per folder served: its target's lock
        self._locked_out: dict[str, TargetLocked] = {}  # unusable because another process holds the target
        self._lock = threading.RLock()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._sleeping = False  # the main loop waits for a deadline: _wake() interrupts it
        self._sleeping_long = False  # ...one further than PROGRESS_INTERVAL: so does a new change
        self.changes.on_change = self._new_change
        self._running = True
        self._last_progress = 0.0
        self._last_root_check = 0.0
        self._next_rescan = 0.0
        self._last_ping = 0.0
        self._last_status = ""
        self._ping_every = watchdog_interval()
        self._observer_deaths: deque[float] = deque()
        self._observer_unstable = False
        self._targets_deleted: set[str] = set()  # by the observer thread: their roots' watches saw them go
        self._target_losses: dict[str, dict[str, bool]] = {}  # folder → top-level path → is a directory
        self._target_losses_at = 0.0
        self._rescan_every = self.config.rescan_interval
        self.pool: WorkerPool | None = None
        self.watcher: Watcher | None = None
        self.view = OperatorView(self.log, self.changes, self.folders, self.config.log.trace)
        self.catch_ups = CatchUps(self.log, self.changes, self.folders, self._lock, self.instance,
                                  self.view.folder_stats, self._wake, once=self.once)
        self.reconciler = self.catch_ups.reconciler
        self.results = ResultRecorder(self.log, self.changes, self.folders, self.view.repeats,
                                      self.reconciler.request, self.view.observe, self._check_roots_soon,
                                      self._wake, once=self.once)
        self.counters = self.results.counters
        # Read by status.snapshot() (the control socket's `status`, the metrics).
        self.started, self.started_wall = self.view.started, self.view.started_wall
        self.folder_stats = self.view.folder_stats

    @property
    def control(self) -> ControlServer | None:
        return self.view.control

    @property
    def metrics(self) -> Any:
        return self.view.metrics

    # -- start-up --------------------------------------------------------------
    def _admit(self, folders: tuple[FolderConfig, ...]) -> list[str]:
        """Serve each folder whose source can be read and target written; log the others."""
        admitted = []
        for f in folders:
            self._locked_out.pop(f.name, None)
            problem, fix = checks.folder_problem(f, self.instance), self._unusable_fix()
            if problem is None:  # folder_problem made the target: it can hold the lock now
                problem, fix = self._lock_target(f)
            if problem is not None:
                self.unusable[f.name] = f
                self.log.error("folder_unusable", folder=f.name, error=problem, fix=fix)
                continue
            self.unusable.pop(f.name, None)
            with self._lock:
                self.folders[f.name] = FolderState(f, Excluder(f.exclude), root_id=path_identity(str(f.source)),
                                                   target_id=path_identity(str(f.target)))
            admitted.append(f.name)
        return admitted

    def _lock_target(self, f: FolderConfig) -> tuple[str | None, str]:
        """Hold the lock of the folder's target; (problem, fix) when another process holds it."""
        held = self.locks.get(f.name)
        if held is not None:
            if held.target == str(f.target) and held.intact():
                return None, ""  # a reload that kept the target keeps the lock, without a gap
            self._release(f.name)
        try:
            self.locks[f.name] = targetlock.acquire(str(f.target), str(self.config.path))
        except TargetLocked as exc:
            self._locked_out[f.name] = exc
            then = ("then run sync again; the other folders are synced" if self.once else
                    "then reload (systemctl reload foldermirror, or SIGHUP); the other folders are served")
            holder = f" (pid {exc.pid})" if exc.pid else ""
            return str(exc), f"stop the other foldermirror{holder} or point folder {f.name} at another target, {then}"
        except FoldermirrorError as exc:
            return str(exc), self._unusable_fix()
        return None, ""

    def _unusable_fix(self) -> str:
        return UNUSABLE_FIX_SYNC if self.once else UNUSABLE_FIX

    def _release(self, name: str) -> None:
        lock = self.locks.pop(name, None)
        if lock is not None:
            lock.release()

    def _nothing_served(self) -> str:
        """The start-up error when no folder is left: the holders when every target is locked."""
        names = [f.name for f in self.config.folders]
        if names and all(n in self._locked_out for n in names):
            return "; ".join(str(self._locked_out[n]) for n in names)
        return "no folder can be served (each one is named in a folder_unusable line above)"

    def _warn_private_tmp(self, config: Config) -> None:
        for key, path in checks.private_tmp_paths(config):
            self.log.warning("private_tmp_path", key=key, path=path,
                             error="the unit's PrivateTmp=yes gives the service its own empty /tmp and /var/tmp: "
                                   "this path is not the one you see, and what is written there vanishes on stop",
                             fix="move it out of /tmp and /var/tmp")

    def _check_watch_limit(self) -> None:
        """Warn when the folders hold more directories than inotify may watch (PITFALLS #6)."""
        self._rescan_every = self.config.rescan_interval
        served = tuple(s.config for s in self.folders.values())
        shortage = checks.watch_shortage(served, checks.max_user_watches())
        if shortage is None:
            return
        if not self._rescan_every:
            self._rescan_every = DEFAULT_RESCAN  # the unwatched part needs some safety net
            self._next_rescan = time.monotonic() + self._rescan_every
        sysctl = checks.WATCHES_SYSCTL
        self.log.warning(
            "inotify_limit_low", sysctl=sysctl, limit=shortage.limit, needed=shortage.needed,
            rescan_interval_s=self._rescan_every,
            error=f"the watched folders hold {shortage.needed:,} directories but {sysctl} lets a user watch "
                  f"{shortage.limit:,}: directories past the limit get no events, and their changes are found "
                  f"only by the rescan every {self._rescan_every:g}s",
            fix=f"echo '{sysctl} = {shortage.suggested}' > /etc/sysctl.d/90-foldermirror.conf && sysctl --system, "
                f"then restart the service")

    def _spec(self, name: str) -> FolderSpec | None:
        state = self.folders.get(name)
        if state is None:
            return None
        f = state.config
        return (str(f.source), str(f.target), f.delete, f.durable, state.root_id, self.changes.epoch(name))

    def run(self) -> int:
        cfg = self.config
        if not self.once:
            self._install_signals()  # first: a SIGTERM during start-up is acted on, not fatal
        self.log.info("daemon_started", pid=os.getpid(), config=str(cfg.path), workers=cfg.workers,
                      folders=[f.name for f in cfg.folders], mode="sync" if self.once else "run")
        self._warn_private_tmp(cfg)
        if not self._admit(cfg.folders):
            raise StartupError(self._nothing_served())
        if not self.once:
            self._check_watch_limit()
        # The Pool (and its fork server) comes before any watcher thread (PITFALLS #8, #12).
        self.pool = WorkerPool(cfg.workers, self.results.on_results, self._spec, self._on_worker_lost, self.instance,
                               wake=self._wake, on_error=self._on_pool_error)
        if not self.once:
            # The socket answers before the start-up walks are requested: say "catching up" from the start.
            self.catch_ups.begin("startup")
            self.view.start(self.config, self, self.catch_ups.request)
        dispatcher = threading.Thread(target=run_dispatcher, args=(self.changes, self.pool, lambda: self._running),
                                      name="dispatcher", daemon=True)
        dispatcher.start()
        self.reconciler.start()
        if not self.once:
            self.watcher = Watcher(self)
            for name, error in self.watcher.start(tuple(s.config for s in self.folders.values())):
                self.folders[name].missing = True
                self.log.error("folder_unwatched", folder=name, error=error)
            for name, state in self.folders.items():
                state.root_id = self.watcher.identity(name)
                self.watcher.watch_target(state.config)
        for name in list(self.folders):
            self.catch_ups.request(name, "startup")
        if not self.once:
            # Watches are in place: changes from here on are seen, and the catch-up covers the rest.
            self.log.info("daemon_ready", folders=len(self.folders), unusable=sorted(self.unusable))
            self.notifier.ready(self._status_text())
        self._next_rescan = time.monotonic() + self._rescan_every
        try:
            if self.once:
                return self._run_once()
            self._main_loop()
            return EXIT_OK
        finally:
            self._shutdown()

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self._signals.put(signum))

    # -- main loop -------------------------------------------------------------
    def _main_loop(self) -> None:
        while True:
            sig = self._wait(self._next_wait(time.monotonic()))
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.log.info("daemon_stopping", signal=signal.Signals(sig).name)
                return
            if sig == signal.SIGHUP:
                self._reload()
            self._tick()

    def _wait(self, timeout: float | None) -> int | None:
        try:
            return self._signals.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            self._sleeping = self._sleeping_long = False

    def _wake(self) -> None:
        """Any thread: the main loop has something new to look at; cut its sleep short."""
        if self._sleeping:
            self._sleeping = self._sleeping_long = False
            self._signals.put(WAKE)

    def _new_change(self) -> None:
        # A pending path only changes the status line, which may wait for the next pass if
        # that comes within PROGRESS_INTERVAL: a trickle of changes does not wake it each time.
        if self._sleeping_long:
            self._wake()

    def _next_wait(self, now: float) -> float | None:
        """Seconds until the main loop has something to do (None: nothing until woken).

        While there is work (a catch-up, a walk, a path pending or in flight) it ticks every
        TICK. Idle, it sleeps until the earliest deadline, and whatever hands it new work
        from another thread wakes it: the ChangeQueue, a catch-up request, the pool's
        worker monitor, the watcher (observer exit, root lost, suspect directories).
        """
        self._sleeping = self._sleeping_long = True  # before looking: a change made meanwhile wakes the wait
        due = self.changes.next_due()
        if (due is not None and due <= now) or not self.reconciler.idle() or self.catch_ups.active():
            self._sleeping = self._sleeping_long = False
            return TICK
        deadlines = [d for d in (due, self.view.repeats.next_due()) if d is not None]
        deadlines += [s.rewatch_at for s in self.folders.values() if s.rewatch_at]
        if self.watcher is not None:
            deadlines.append(self._root_check_at())
        if self._ping_every:
            deadlines.append(self._last_ping + self._ping_every)
        if self._rescan_every:
            deadlines.append(self._next_rescan)
        if self._observer_deaths:
            deadlines.append(self._observer_deaths[0] + OBSERVER_DEATH_WINDOW)
        if self._target_losses:
            deadlines.append(self._target_losses_at)
        if self._status_text() != self._last_status:
            deadlines.append(self._last_progress + PROGRESS_INTERVAL)
        wait = min(deadlines) - now if deadlines else None
        self._sleeping_long = wait is None or wait > PROGRESS_INTERVAL
        if wait is not None and wait <= 0:
            # A deadline already past is one the last pass chose not to act on (a watchdog
            # ping withheld while unhealthy): look again at the working pace.
            return TICK
        return wait

    def _root_check_at(self) -> float:
        """When the source roots are next compared with what is watched.

        inotify reports a deleted or unmounted root (root_lost asks for a check at once) and
        a worker that finds its root gone or replaced says so (root_changed); a missing or
        suspect root is then looked at every ROOT_CHECK_INTERVAL until it is back. Nothing
        reports a root renamed away (watchdog drops IN_MOVE_SELF), a file system mounted over
        it or a parent made unreadable: every rescan looks, and this slow safety poll bounds
        how long a quiet folder can be watched at the wrong directory without a word.
        """
        troubled = any(s.missing or s.suspect or s.target_lost for s in self.folders.values())
        return self._last_root_check + (ROOT_CHECK_INTERVAL if troubled else ROOT_SAFETY_INTERVAL)

    def _run_once(self) -> int:
        while True:
            time.sleep(TICK)
            self._tick()
            if not self.catch_ups.active():
                break
        if self.progress_tty:
            sys.stderr.write("\n")
        return EXIT_FAILURE if self.counters.failed or self.unusable else EXIT_OK

    def _tick(self) -> None:
        now = time.monotonic()
        assert self.pool is not None
        rescan = bool(self._rescan_every) and now >= self._next_rescan and not self.once
        self.pool.supervise()
        if self.watcher is not None:
            if not self.watcher.alive():
                self._observer_deaths.append(now)
                self.watcher.restart()
                self.log.error("watcher_restarted", reason="observer thread died",
                               deaths=self._recent_observer_deaths(now), window_s=OBSERVER_DEATH_WINDOW)
                for name, state in self.folders.items():
                    self._adopt_root(name, state)
                    self.catch_ups.request(name, "watch_restored")
            if rescan or now >= self._root_check_at():
                self._last_root_check = now
                self._check_roots()
                self._check_targets()
            self._mend_targets(now)
        self._rewatch(now)
        self.catch_ups.finish(now)
        self.view.log_repeats()
        if rescan:
            self._next_rescan = now + self._rescan_every
            for name in self.folders:
                self.catch_ups.request(name, "rescan")
        self._report(now)

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
                self.catch_ups.request(name, "watch_restored")
        for name, folder in self.folders.items():
            # A worker saw the root gone or replaced but nothing changed by the time we
            # looked (a brief outage): compare again what it set aside.
            if folder.suspect and self.watcher.watched(name):
                folder.suspect = False
                self._adopt_root(name, folder)
                self.catch_ups.request(name, "source_recheck")

    def _check_targets(self) -> None:
        """Make a target root again that was deleted or replaced, and compare its folder.

        Its own watch reports a deleted root at once (target_lost); a root replaced by a
        mount or unmount is found by this check on the roots' schedule.
        """
        assert self.watcher is not None
        deleted, self._targets_deleted = self._targets_deleted, set()
        for name, state in list(self.folders.items()):
            f = state.config
            now = path_identity(str(f.target))
            lock = self.locks.get(name)
            locked = lock is None or lock.intact()
            if now is not None and now == state.target_id and name not in deleted and locked:
                continue
            if now is None or name in deleted:
                what = "was deleted"
            elif now != state.target_id:
                what = "was replaced by another directory"
            else:
                what = "was emptied (its lock file is gone)"
            try:
                os.makedirs(f.target, exist_ok=True)
            except OSError as exc:
                if not state.target_lost:
                    state.target_lost = True
                    self.log.error("target_lost", folder=name, path=str(f.target),
                                   error=f"the target folder {what} and cannot be made again: {copier_describe(exc)}",
                                   fix="make the target's parent folder exist and writable for the service user; "
                                       f"it is tried again every {ROOT_CHECK_INTERVAL:g}s")
                continue
            problem, fix = self._lock_target(f)  # another daemon may have taken the new one
            if problem is not None:
                self._stop_serving(name)
                self.unusable[name] = f
                self.log.error("folder_unusable", folder=name, error=problem, fix=fix)
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
            state.target_id = path_identity(str(f.target))
            self.watcher.watch_target(f)
            self.catch_ups.request(name, "target_restored")

    def _stop_serving(self, name: str) -> None:
        assert self.watcher is not None
        self.watcher.remove(name)
        with self._lock:
            self.folders.pop(name, None)
        self.changes.forget(name)
        self._release(name)

    def _check_roots_soon(self) -> None:
        """Any thread: a source root may be gone or replaced; the main loop looks on its next pass."""
        self._last_root_check = 0.0
        self._wake()

    def _adopt_root(self, name: str, state: FolderState) -> None:
        """Take the root identity the watcher now watches; work seen under another is stale."""
        assert self.watcher is not None
        root_id = self.watcher.identity(name)
        if root_id != state.root_id:
            self.changes.forget(name)
            state.root_id = root_id

    def _rewatch(self, now: float) -> None:
        if self.watcher is None:
            return
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
            self.catch_ups.request(name, "watch_rebuilt")

    def _recent_observer_deaths(self, now: float) -> int:
        while self._observer_deaths and now - self._observer_deaths[0] > OBSERVER_DEATH_WINDOW:
            self._observer_deaths.popleft()
        return len(self._observer_deaths)

    def _check_observer_stability(self, now: float) -> bool:
        """False while the observer died more than OBSERVER_DEATHS_MAX times in the window."""
        deaths = self._recent_observer_deaths(now)
        unstable = deaths > OBSERVER_DEATHS_MAX
        if unstable and not self._observer_unstable:
            action = ("watchdog pings stop, so systemd restarts the service" if self._ping_every
                      else "no watchdog is configured (WatchdogSec=), so it is only rebuilt again")
            self.log.error("observer_unstable", deaths=deaths, window_s=OBSERVER_DEATH_WINDOW,
                           error=f"the file system observer died {deaths} times in {OBSERVER_DEATH_WINDOW:g}s",
                           action=action)
        elif not unstable and self._observer_unstable:
            self.log.info("observer_stable", deaths=deaths, window_s=OBSERVER_DEATH_WINDOW)
        self._observer_unstable = unstable
        return not unstable

    def _report(self, now: float) -> None:
        stable = self._check_observer_stability(now)
        healthy = (stable and self.pool is not None and self.pool.healthy()
                   and (self.watcher is None or self.watcher.alive()))
        if self._ping_every and healthy and now - self._last_ping >= self._ping_every:
            self._last_ping = now
            self.notifier.watchdog()
        if now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        status = self._status_text()
        if status != self._last_status:
            self._last_status = status
            self.notifier.status(status)
        self.catch_ups.report(self.progress_tty)

    def _status_text(self) -> str:
        problems = []
        if self._observer_unstable:
            problems.append(f"unhealthy: the observer died {len(self._observer_deaths)} times "
                            f"in {OBSERVER_DEATH_WINDOW:g}s")
        if self.unusable:
            problems.append(f"{len(self.unusable)} unusable ({', '.join(sorted(self.unusable))})")
        return "; ".join([self._activity_text(), *problems])

    def _activity_text(self) -> str:
        catching = self.catch_ups.activity()
        if catching is not None:
            return catching
        pending, in_flight = self.changes.counts()
        n = len(self.folders)
        return (f"watching {n} folder{'' if n == 1 else 's'}, {pending + in_flight:,} pending, "
                f"{self.counters.mirrored:,} files mirrored")

    def _on_pool_error(self, where: str, exc: BaseException) -> None:
        self.log.error("internal_error", where=where, error=repr(exc))

    def _on_worker_lost(self, pids: list[int], resubmitted: int) -> None:
        self.log.error("worker_lost", pids=pids, resubmitted=resubmitted,
                       error="a worker process died; the pool was replaced and its work resubmitted")
        for name in list(self.folders):  # the dead worker's temp file, if any, goes with this walk
            self.catch_ups.request(name, "worker_lost")

    # -- watcher sink (called on the observer thread) ---------------------------------
    def changed(self, folder: str, path: str, ready: bool) -> None:
        state = self.folders.get(folder)
        if state is not None:  # a fresh event ends a retry backoff: its cause may be fixed
            self.changes.touch(folder, path, settle=state.config.settle, ready=ready, not_before=0.0,
                               max_delay=state.config.max_delay)

    def moved(self, folder: str, src: str, dst: str, is_dir: bool) -> None:
        state = self.folders.get(folder)
        if state is not None:
            self.changes.moved(folder, src, dst, settle=state.config.settle, is_dir=is_dir)

    def subtree(self, folder: str, path: str) -> None:
        self.reconciler.request(Request(folder, path, "subtree", ready=False))

    def overflow(self) -> None:
        self.log.warning("overflow_rescan", error="the kernel's inotify queue overflowed and events were lost",
                         fix="nothing to do: every folder is compared again; raise fs.inotify.max_queued_events "
                             "if this happens often")
        self.counters.overflows += 1
        for name in list(self.folders):
            self.catch_ups.request(name, "overflow")

    def root_lost(self, folder: str) -> None:
        if self.watcher is not None:
            self.watcher.mark_lost(folder)
        self._check_roots_soon()

    def target_lost(self, folder: str, root_deleted: bool) -> None:
        if root_deleted:  # marked, not only looked at: a root made again at once may get the old inode number
            self._targets_deleted.add(folder)
            self._check_roots_soon()
        else:  # its lock file went: looked at once the target is quiet (see target_entry_lost)
            self.target_entry_lost(folder, "", True)

    def target_entry_lost(self, folder: str, path: str, is_dir: bool) -> None:
        # Mended once the target has been quiet for TARGET_QUIET: mending each entry at once
        # would fight an `rm -rf` of the whole target that is still under way.
        with self._lock:
            self._target_losses.setdefault(folder, {})[path] = is_dir
            self._target_losses_at = time.monotonic() + TARGET_QUIET
        self._wake()

    def _mend_targets(self, now: float) -> None:
        """Mirror again what was deleted from the top of a target behind the daemon's back."""
        with self._lock:
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
                    self.reconciler.request(Request(folder, path, "target_changed", ready=True))
                else:
                    self.changes.touch(folder, path, settle=state.config.settle, ready=True)

    def watch_suspect(self, folder: str, path: str) -> None:
        state = self.folders.get(folder)
        if state is not None:
            state.rewatch_paths += 1
            state.rewatch_at = time.monotonic() + REWATCH_QUIET
            self._wake()

    def observer_exited(self) -> None:
        self._wake()  # the main loop restarts an observer that died

    def handler_error(self, folder: str, error: BaseException) -> None:
        self.log.error("watch_handler_error", folder=folder, error=repr(error))
        self.catch_ups.request(folder, "handler_error")

    def watchdog_log(self, level: int, message: str) -> None:
        self.log.warning("watch_warning", error=message)

    # -- reload ------------------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config.path)
        except Exception as exc:
            # load_config turns every bad file into a ConfigError; anything else is a bug in
            # it, which must still not take the running daemon down.
            error = str(exc) if isinstance(exc, ConfigError) else f"{self.config.path}: {exc!r}"
            self.log.error("config_invalid", config=str(self.config.path), error=error,
                           action="kept the running configuration")
            self.notifier.ready(self._status_text())
            return
        self._warn_private_tmp(new)
        # Compared with what is served, so a folder that was unusable is tried again.
        old = {n: s.config for n, s in self.folders.items()}
        fresh = {f.name: f for f in new.folders}
        removed = [n for n in old if n not in fresh]
        added = [n for n in fresh if n not in old]
        changed = [n for n in fresh if n in old and fresh[n] != old[n]]
        for name in removed + changed:
            self.watcher.remove(name)
            with self._lock:
                self.folders.pop(name, None)
            self.changes.forget(name)
            if name in removed or fresh[name].target != old[name].target:
                self._release(name)  # before admitting: another folder may now name that target
        self.unusable.clear()
        self._locked_out.clear()
        admitted = self._admit(tuple(fresh[n] for n in added + changed))
        for name in [n for n in self.locks if n not in self.folders]:
            self._release(name)  # a changed folder that kept its target but is now unusable
        ignored = [k for k in ("workers", "control_socket", "metrics") if getattr(new, k) != getattr(self.config, k)]
        if new.rescan_interval != self.config.rescan_interval:
            self._next_rescan = time.monotonic() + new.rescan_interval
        self.config = new
        self._check_watch_limit()
        for name in admitted:
            f = fresh[name]
            error = self.watcher.add(f)
            if error is not None:
                self.folders[name].missing = True
                self.log.error("folder_unwatched", folder=name, error=error[1])
            else:
                self.folders[name].root_id = self.watcher.identity(name)
            self.watcher.watch_target(f)
            self.catch_ups.request(name, "reload")
        self.log.info("config_reloaded", config=str(new.path), added=added, removed=removed, changed=changed,
                      **({"unusable": sorted(self.unusable)} if self.unusable else {}),
                      **({"needs_restart": ignored} if ignored else {}))
        self.notifier.ready(self._status_text())

    # -- shutdown -------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.view.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.reconciler.stop()
        self._running = False
        self.changes.close()
        abandoned = self.pool.stop(self.config.stop_grace) if self.pool is not None else 0
        for name in list(self.locks):  # no worker writes any more: another daemon may take over
            self._release(name)
        self.view.log_repeats(flush=True)
        self.log.info("daemon_stopped", files_mirrored=self.counters.mirrored, bytes=self.counters.bytes,
                      deleted=self.counters.deleted, failed=self.counters.failed, abandoned=abandoned)
        self.notifier.close()
