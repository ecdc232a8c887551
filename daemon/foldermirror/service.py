"""The main thread: wires config, logs, pool, watcher and reconciler; signals; lifecycle.

Signal handlers only record the signal; the main loop acts on it (as gunicorn's arbiter).
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from foldermirror import copier
from foldermirror.changes import ChangeQueue, Item
from foldermirror.config import Config, FolderConfig, load_config
from foldermirror.errors import EXIT_FAILURE, EXIT_OK, ConfigError, StartupError
from foldermirror.logs import get_logger
from foldermirror.notify import Notifier, watchdog_interval
from foldermirror.paths import Excluder
from foldermirror.pool import FolderSpec, WorkerPool, process_alive, run_dispatcher
from foldermirror.reconcile import Reconciler, Request, WalkStats, diff_tree, hold_deletions
from foldermirror.watcher import Watcher

TICK = 0.2
ROOT_CHECK_INTERVAL = 1.0
REWATCH_QUIET = 2.0       # seconds without suspect directory events before watches are rebuilt
PROGRESS_INTERVAL = 1.0
RETRY_MAX_DELAY = 300.0
PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EEXIST}


@dataclass
class _CatchUp:
    reason: str
    started: float
    walk_done: bool = False
    differences: int = 0
    files: int = 0
    bytes: int = 0
    failed: int = 0


@dataclass
class Counters:
    mirrored: int = 0
    bytes: int = 0
    deleted: int = 0
    failed: int = 0


@dataclass
class _FolderState:
    config: FolderConfig
    excluder: Excluder
    catch_up: _CatchUp | None = None
    missing: bool = False
    root_id: copier.RootId | None = None  # the source root being watched: (st_dev, st_ino)
    suspect: bool = False                 # a worker found the root gone or replaced
    rewatch_at: float = 0.0               # rebuild the watches then (0: no need)
    rewatch_paths: int = 0                # suspect directory events since the last rebuild


@dataclass
class Service:
    config: Config
    once: bool = False            # `sync`: one catch-up pass, no watching, no retries
    progress_tty: bool = False    # `sync` on a terminal: a progress line instead of log lines
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        self.log = get_logger()
        self.instance = os.urandom(4).hex()
        self.counters = Counters()
        self.changes = ChangeQueue()
        self.folders: dict[str, _FolderState] = {}
        self._lock = threading.RLock()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._running = True
        self._attempts: dict[tuple[str, str], int] = {}
        self._last_progress = 0.0
        self._last_root_check = 0.0
        self._next_rescan = 0.0
        self._last_ping = 0.0
        self._last_status = ""
        self._ping_every = watchdog_interval()
        self.pool: WorkerPool | None = None
        self.watcher: Watcher | None = None
        self.reconciler = Reconciler(self._walk)

    # -- start-up --------------------------------------------------------------
    def _prepare_folders(self, folders: tuple[FolderConfig, ...]) -> None:
        for f in folders:
            if f.create:
                try:
                    os.makedirs(f.source, exist_ok=True)
                except OSError as exc:
                    raise StartupError(f"folder {f.name}: cannot create source {f.source}: {exc.strerror}") from None
            try:
                os.makedirs(f.target, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"folder {f.name}: cannot create target {f.target}: {exc.strerror}") from None
            if not os.access(f.target, os.W_OK | os.X_OK):
                raise StartupError(f"folder {f.name}: target {f.target} is not writable by this user (uid {os.geteuid()})")

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
        self._prepare_folders(cfg.folders)
        self.log.info("daemon_started", pid=os.getpid(), config=str(cfg.path), workers=cfg.workers,
                      folders=[f.name for f in cfg.folders], mode="sync" if self.once else "run")
        for f in cfg.folders:
            self.folders[f.name] = _FolderState(f, Excluder(f.exclude), root_id=_root_id(f))
        # The Pool (and its fork server) comes before any watcher thread (PITFALLS #8, #12).
        self.pool = WorkerPool(cfg.workers, self._on_result, self._spec, self._on_worker_lost, self.instance)
        dispatcher = threading.Thread(target=run_dispatcher, args=(self.changes, self.pool, lambda: self._running),
                                      name="dispatcher", daemon=True)
        dispatcher.start()
        self.reconciler.start()
        if not self.once:
            self.watcher = Watcher(self)
            for name, error in self.watcher.start(cfg.folders):
                self.folders[name].missing = True
                self.log.error("folder_unwatched", folder=name, error=error)
            for name, state in self.folders.items():
                state.root_id = self.watcher.identity(name)
            self.log.info("daemon_ready", folders=len(cfg.folders))
            self.notifier.ready(self._status_text())
        for f in cfg.folders:
            self._request_catch_up(f.name, "startup")
        self._next_rescan = time.monotonic() + cfg.rescan_interval
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
            try:
                sig = self._signals.get(timeout=TICK)
            except queue.Empty:
                sig = None
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.log.info("daemon_stopping", signal=signal.Signals(sig).name)
                return
            if sig == signal.SIGHUP:
                self._reload()
            self._tick()

    def _run_once(self) -> int:
        while True:
            time.sleep(TICK)
            self._tick()
            if not any(s.catch_up for s in self.folders.values()):
                break
        if self.progress_tty:
            sys.stderr.write("\n")
        return EXIT_FAILURE if self.counters.failed else EXIT_OK

    def _tick(self) -> None:
        now = time.monotonic()
        assert self.pool is not None
        self.pool.supervise()
        if self.watcher is not None:
            if not self.watcher.alive():
                self.log.error("watcher_restarted", reason="observer thread died")
                self.watcher.restart()
                for name, state in self.folders.items():
                    self._adopt_root(name, state)
                    self._request_catch_up(name, "watch_restored")
            if now - self._last_root_check >= ROOT_CHECK_INTERVAL:
                self._last_root_check = now
                self._check_roots()
        self._rewatch(now)
        self._finish_catch_ups(now)
        if self.config.rescan_interval and now >= self._next_rescan and not self.once:
            self._next_rescan = now + self.config.rescan_interval
            for name in self.folders:
                self._request_catch_up(name, "rescan")
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
                self._request_catch_up(name, "watch_restored")
        for name, folder in self.folders.items():
            # A worker saw the root gone or replaced but nothing changed by the time we
            # looked (a brief outage): compare again what it set aside.
            if folder.suspect and self.watcher.watched(name):
                folder.suspect = False
                self._adopt_root(name, folder)
                self._request_catch_up(name, "source_recheck")

    def _adopt_root(self, name: str, state: _FolderState) -> None:
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
            self._request_catch_up(name, "watch_rebuilt")

    def _report(self, now: float) -> None:
        healthy = self.pool is not None and self.pool.healthy() and (self.watcher is None or self.watcher.alive())
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
        for name, state in self.folders.items():
            c = state.catch_up
            if c is None:
                continue
            pending, in_flight = self.changes.counts(name)
            if self.progress_tty:
                sys.stderr.write(f"\r{name}: {c.files} copied, {pending + in_flight} to go{' ' * 10}")
                sys.stderr.flush()
            else:
                self.log.info("sync_progress", folder=name, files=c.files, bytes=c.bytes,
                              pending=pending, in_flight=in_flight, walk_done=c.walk_done)

    def _status_text(self) -> str:
        catching = [(n, s.catch_up) for n, s in self.folders.items() if s.catch_up is not None]
        if catching:
            name, c = catching[0]
            assert c is not None
            total = max(c.differences, c.files)
            return f"catching up {name}: {c.files:,}/{total:,} files"
        pending, in_flight = self.changes.counts()
        return (f"watching {len(self.folders)} folders, {pending + in_flight:,} pending, "
                f"{self.counters.mirrored:,} files mirrored")

    # -- catch-up ----------------------------------------------------------------
    def _request_catch_up(self, name: str, reason: str) -> None:
        with self._lock:
            state = self.folders.get(name)
            if state is None:
                return
            if state.catch_up is None:
                state.catch_up = _CatchUp(reason, time.monotonic())
            else:
                state.catch_up.walk_done = False
        self.reconciler.request(Request(name, "", reason, ready=True))

    def _walk(self, req: Request) -> None:
        state = self.folders.get(req.folder)
        if state is None:
            return
        f = state.config
        stats = WalkStats()
        extras: list[str] = []
        try:
            for diff in diff_tree(str(f.source), str(f.target), state.excluder, f.delete, self.instance,
                                  sub=req.sub, stats=stats, writer_alive=process_alive):
                if diff.reason == "extra":
                    extras.append(diff.path)  # judged once the walk has seen everything
                else:
                    self.changes.touch(f.name, diff.path, settle=f.settle, ready=req.ready)
            if extras and req.sub == "" and hold_deletions(stats, f.max_delete_fraction):
                self._hold_deletions(f, req, stats)
                stats.differences -= len(extras)
                extras = []
            for path in extras:
                self.changes.touch(f.name, path, settle=f.settle, ready=req.ready)
        except OSError as exc:
            self.log.error("reconcile_failed", folder=f.name, path=req.sub, error=copier._describe(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop later walks
            self.log.error("reconcile_failed", folder=f.name, path=req.sub, error=repr(exc))
        for rel in stats.unreadable or ():
            self.log.warning("source_unreadable", folder=f.name, path=rel,
                             error="permission denied listing this directory; its files are not mirrored")
        if stats.stale_temps:
            self.log.info("stale_temps_removed", folder=f.name, count=stats.stale_temps)
        self.log.debug("reconcile_walked", folder=f.name, path=req.sub, reason=req.reason,
                       entries=stats.entries, differences=stats.differences)
        if req.sub == "":
            with self._lock:
                c = state.catch_up
                if c is not None:
                    c.walk_done = True
                    c.differences += stats.differences

    def _hold_deletions(self, f: FolderConfig, req: Request, stats: WalkStats) -> None:
        looks = "looks empty" if stats.entries == 0 else "lost most of what its target holds"
        self.log.error("mass_delete_held", folder=f.name, path=str(f.source), reason=req.reason,
                       source_entries=stats.entries, target_entries=stats.target_entries,
                       would_delete=stats.doomed, max_delete_fraction=f.max_delete_fraction,
                       error=f"the source {looks} (a failed mount or a wrong path?); "
                             f"deletions in the target are held back, copies go on",
                       fix=f"if the deletions are intended, set max_delete_fraction: 1 for folder {f.name} "
                           f"and reload (systemctl reload foldermirror), then set it back")

    def _finish_catch_ups(self, now: float) -> None:
        for name, state in self.folders.items():
            c = state.catch_up
            if c is None or not c.walk_done or not self.changes.settled(name):
                continue
            with self._lock:
                state.catch_up = None
            self.log.info("sync_finished", folder=name, reason=c.reason, files=c.files, bytes=c.bytes,
                          failed=c.failed, differences=c.differences, seconds=round(now - c.started, 3))

    # -- results -------------------------------------------------------------------
    def _on_result(self, item: Item, outcomes: list[copier.Outcome], duration_ms: float, pid: int) -> None:
        state = self.folders.get(item.folder)
        self.changes.done(item)
        if state is None:
            return
        f = state.config
        latency_ms = round((time.monotonic() - item.first_seen) * 1000, 3)
        if item.walk:  # a directory moved here: its contents, however the move was replayed
            self.reconciler.request(Request(f.name, item.path, "subtree", ready=True))
        for path, status, kind, nbytes, error, err_no in outcomes:
            key = (item.folder, path)
            c = state.catch_up
            if status in ("copied", "renamed"):
                self._attempts.pop(key, None)
                self.counters.mirrored += 1
                self.counters.bytes += nbytes
                if c is not None:
                    c.files += 1
                    c.bytes += nbytes
                extra = {"renamed_from": error} if status == "renamed" else {}
                self.log.info("file_mirrored", folder=f.name, path=path, kind=kind, bytes=nbytes,
                              duration_ms=round(duration_ms, 3), latency_ms=latency_ms, worker_pid=pid, **extra)
                if status == "renamed" and kind == "dir" and not item.walk:
                    self.reconciler.request(Request(f.name, path, "subtree", ready=True))
            elif status == "deleted":
                self._attempts.pop(key, None)
                self.counters.deleted += 1
                self.log.info("file_deleted", folder=f.name, path=path, kind=kind, latency_ms=latency_ms)
            elif status == "changed":
                self.log.debug("file_changed_during_copy", folder=f.name, path=path)
                self.changes.touch(f.name, path, settle=f.settle)
            elif status == "skipped":
                self.log.warning("file_skipped", folder=f.name, path=path, kind=kind, error=error)
            elif status == "failed":
                self._failed(state, path, error, err_no)
            elif status == "root_changed":
                self._root_changed(state, path, error, err_no)
            elif status == "stale":  # the comparison after the change that made it stale covers it
                self.log.debug("file_set_aside", folder=f.name, path=path, error="seen before the folder changed")
            else:
                self._attempts.pop(key, None)
                self.log.debug("file_checked", folder=f.name, path=path, status=status)

    def _failed(self, state: _FolderState, path: str, error: str, err_no: int) -> None:
        f = state.config
        key = (f.name, path)
        attempt = self._attempts.get(key, 0) + 1
        will_retry = not self.once and err_no not in PERMANENT_ERRNOS
        self.counters.failed += 1
        if state.catch_up is not None:
            state.catch_up.failed += 1
        extra: dict[str, Any] = {}
        if will_retry:
            self._attempts[key] = attempt
            delay = min(RETRY_MAX_DELAY, 2.0 ** (attempt - 1))
            extra["retry_in_s"] = delay
            self.changes.touch(f.name, path, settle=f.settle, ready=True, not_before=time.monotonic() + delay)
        else:
            self._attempts.pop(key, None)
        self.log.error("mirror_failed", folder=f.name, path=path, error=error, will_retry=will_retry,
                       attempt=attempt, **extra)

    def _root_changed(self, state: _FolderState, path: str, error: str, err_no: int) -> None:
        """Nothing was done for `path`: the source root is gone or another folder stands there."""
        if self.once:
            self._failed(state, path, error, err_no)
            return
        self.log.debug("file_set_aside", folder=state.config.name, path=path, error=error)
        state.suspect = True
        self._last_root_check = 0.0  # the main loop looks at the root on its next pass

    def _on_worker_lost(self, pids: list[int], resubmitted: int) -> None:
        self.log.error("worker_lost", pids=pids, resubmitted=resubmitted,
                       error="a worker process died; the pool was replaced and its work resubmitted")
        for name in list(self.folders):  # the dead worker's temp file, if any, goes with this walk
            self._request_catch_up(name, "worker_lost")

    # -- watcher sink (called on the observer thread) ---------------------------------
    def changed(self, folder: str, path: str, ready: bool) -> None:
        state = self.folders.get(folder)
        if state is not None:  # a fresh event ends a retry backoff: its cause may be fixed
            self.changes.touch(folder, path, settle=state.config.settle, ready=ready, not_before=0.0)

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
        for name in list(self.folders):
            self._request_catch_up(name, "overflow")

    def root_lost(self, folder: str) -> None:
        if self.watcher is not None:
            self.watcher.mark_lost(folder)
        self._last_root_check = 0.0

    def watch_suspect(self, folder: str, path: str) -> None:
        state = self.folders.get(folder)
        if state is not None:
            state.rewatch_paths += 1
            state.rewatch_at = time.monotonic() + REWATCH_QUIET

    def handler_error(self, folder: str, error: BaseException) -> None:
        self.log.error("watch_handler_error", folder=folder, error=repr(error))
        self._request_catch_up(folder, "handler_error")

    def watchdog_log(self, level: int, message: str) -> None:
        self.log.warning("watch_warning", error=message)

    # -- reload ------------------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config.path)
            self._prepare_folders(new.folders)
        except (ConfigError, StartupError) as exc:
            self.log.error("config_invalid", config=str(self.config.path), error=str(exc),
                           action="kept the running configuration")
            self.notifier.ready(self._status_text())
            return
        old = {f.name: f for f in self.config.folders}
        fresh = {f.name: f for f in new.folders}
        removed = [n for n in old if n not in fresh]
        added = [n for n in fresh if n not in old]
        changed = [n for n in fresh if n in old and fresh[n] != old[n]]
        for name in removed + changed:
            self.watcher.remove(name)
            with self._lock:
                self.folders.pop(name, None)
            self.changes.forget(name)
        for name in added + changed:
            f = fresh[name]
            with self._lock:
                self.folders[name] = _FolderState(f, Excluder(f.exclude), root_id=_root_id(f))
            error = self.watcher.add(f)
            if error is not None:
                self.folders[name].missing = True
                self.log.error("folder_unwatched", folder=name, error=error[1])
            else:
                self.folders[name].root_id = self.watcher.identity(name)
            self._request_catch_up(name, "reload")
        ignored = [k for k in ("workers",) if getattr(new, k) != getattr(self.config, k)]
        self.config = new
        self.log.info("config_reloaded", config=str(new.path), added=added, removed=removed, changed=changed,
                      **({"needs_restart": ignored} if ignored else {}))
        self.notifier.ready(self._status_text())

    # -- shutdown -------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        self.reconciler.stop()
        self._running = False
        self.changes.close()
        abandoned = self.pool.stop(self.config.stop_grace) if self.pool is not None else 0
        self.log.info("daemon_stopped", files_mirrored=self.counters.mirrored, bytes=self.counters.bytes,
                      deleted=self.counters.deleted, failed=self.counters.failed, abandoned=abandoned)
        self.notifier.close()


def _root_id(f: FolderConfig) -> copier.RootId | None:
    try:
        st = os.stat(f.source)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
