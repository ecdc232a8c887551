"""The main thread: parts wired once, signals, the deadline-driven loop, reload, shutdown.

Service wires the parts by keyword and stays out of the data path: the watcher's handler
puts changes into the Pipeline's ChangeQueue; the Pipeline's dispatcher hands them to the
workers and its ResultRecorder logs what came of them; the catch-ups compare folders and
feed the same queue; WatchHealth keeps the watches true; the operator's view reports.

Signal handlers only record the signal (wakeup.py); the main loop acts on it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from foldermirror import checks, faults, filters
from foldermirror.admission import Admission, reload_plan
from foldermirror.catchup.tracking import CatchUpTracker
from foldermirror.config import Config, load_config
from foldermirror.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, ConfigError, StartupError
from foldermirror.logs import get_logger
from foldermirror.notify import Notifier, watchdog_interval
from foldermirror.pipeline.folder_stats import total
from foldermirror.pipeline.pipeline import Pipeline
from foldermirror.pipeline.watch_health import WatchHealth
from foldermirror.pipeline.watcher import Watcher
from foldermirror.remote.links import Links
from foldermirror.versioning import Pruner
from foldermirror.view.operator import OperatorView
from foldermirror.view.progress import REDRAW, SyncScreen
from foldermirror.view.read_model import ReadModel, status_line
from foldermirror.wakeup import Wakeup

TICK = 0.2                   # the main loop's pace while there is work; idle, it sleeps (see _next_wait)
PROGRESS_INTERVAL = 1.0


@dataclass
class Service:
    config: Config
    once: bool = False            # `sync`: one catch-up pass, no watching, no retries
    # `sync`: the bar on a terminal (no sync_progress lines there), the summary, the interrupted line
    screen: SyncScreen | None = None
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        self.log = get_logger()
        self.instance = os.urandom(4).hex()
        self.wakeup = Wakeup()
        self._wake = self.wakeup.wake
        self._last_progress = 0.0
        self._started = time.monotonic()
        self._next_rescan = 0.0
        self._last_ping = 0.0
        self._last_status = ""
        self._ping_every = watchdog_interval()
        self._rescan_every = self.config.rescan_interval
        self.admission = Admission(log=self.log, instance=self.instance, config_path=str(self.config.path),
                                   once=self.once)
        self.folders = self.admission.folders
        self.view = OperatorView(log=self.log, folders=self.folders, trace=self.config.log.trace)
        self.pipeline = Pipeline(log=self.log, folders=self.folders, folder_stats=self.view.folder_stats,
                                 repeats=self.view.repeats, wake=self._wake, once=self.once)
        self.changes = self.pipeline.changes
        self.changes.on_change = self.wakeup.change
        self.view.follow(self.changes)
        self.catch_ups = CatchUpTracker(log=self.log, changes=self.changes, folders=self.folders,
                                        lock=self.admission.lock, instance=self.instance,
                                        folder_stats=self.view.folder_stats, wake=self._wake, once=self.once,
                                        inodes=self.pipeline.inodes)
        self.health = WatchHealth(log=self.log, folders=self.folders, changes=self.changes,
                                  request_catch_up=self.catch_ups.request,
                                  request_walk=self.catch_ups.reconciler.request, locks=self.admission.locks,
                                  relock=self.admission.lock_target, drop_folder=self._drop_folder, wake=self._wake,
                                  watchdog_enabled=bool(self._ping_every))
        self.links = Links(log=self.log, folders=self.folders, changes=self.changes,
                           request_catch_up=self.catch_ups.request, drop_folder=self._drop_folder, wake=self._wake,
                           once=self.once)
        self.catch_ups.remote_spec = self.links.spec
        self.pruner = Pruner(log=self.log, folders=self.folders, remote_spec=self.links.spec)
        self.pipeline.connect(request_walk=self.catch_ups.reconciler.request, request_catch_up=self.catch_ups.request,
                              root_suspect=self.health.check_roots_soon, link_suspect=self.links.suspect,
                              remote_spec=self.links.spec, observe=self.view.observe, on_kept=self.pruner.on_kept,
                              walking=lambda: not self.catch_ups.reconciler.idle())
        self.model = ReadModel(config=lambda: self.config, folders=self.folders, folder_stats=self.view.folder_stats,
                               all_stats=self.view.all_stats, changes=self.changes, watching=self.health.watching,
                               watch_problems=self.health.problems, overflows=lambda: self.health.overflows,
                               restarts=lambda: self.pipeline.restarts,
                               unusable=lambda: list(self.admission.unusable), addresses=self.view.addresses,
                               started=self.view.started, started_wall=self.view.started_wall,
                               link=self.links.view, versions=self.pruner.view)

    # -- start-up --------------------------------------------------------------
    def run(self) -> int:
        cfg = self.config
        if not self.once:
            self._install_signals()  # first: a SIGTERM during start-up is acted on, not fatal
        else:
            # Ctrl-C stops `sync` as SIGINT stops `run`: recorded here, acted on by the loop, so
            # the pool stops cleanly instead of a KeyboardInterrupt unwinding whatever runs.
            signal.signal(signal.SIGINT, lambda signum, frame: self.wakeup.signal(signum))
        self._started = time.monotonic()
        self._draw()  # the bar from the first moment: admission and the links may take a while
        self.log.info("daemon_started", pid=os.getpid(), config=str(cfg.path), workers=cfg.workers,
                      folders=[f.name for f in cfg.folders], mode="sync" if self.once else "run")
        faults.announce(self.log)
        checks.warn_private_tmp(self.log, cfg)
        filters.warn_meaning_changed(self.log, cfg.folders)
        self.admission.ssh = cfg.ssh
        if not self.admission.admit(cfg.folders):
            raise StartupError(self.admission.nothing_served([f.name for f in cfg.folders]))
        self.links.configure(cfg.ssh)  # before the catch-ups: a remote folder waits for its link
        # The Pool (and its fork server) comes before any watcher thread.
        self.pipeline.start(workers=cfg.workers, instance=self.instance)
        if not self.once:
            # The socket answers before the start-up walks are requested: say "catching up" from the start.
            self.catch_ups.begin("startup")
            self.view.start(self.config, self.model, self.catch_ups.request)
        self.catch_ups.reconciler.start()
        if not self.once:
            self.health.start(Watcher(self.health, self.changes))
        for name, state in list(self.folders.items()):
            if state.config.remote is None:  # a remote one is compared once its link is up
                self.catch_ups.request(name, "startup")
        if not self.once:
            # Watches are in place: changes from here on are seen, and the catch-up covers the rest.
            self.log.info("daemon_ready", folders=len(self.folders), unusable=sorted(self.admission.unusable))
            self.notifier.ready(self._status_text())
            # Counting the directories is a walk of every tree (a second or more at a million
            # files): after READY, beside the catch-up's own walk, not before the watches.
            self._check_watch_limit()
        self._next_rescan = time.monotonic() + self._rescan_every
        try:
            if self.once:
                code = self._run_once()
            else:
                self._main_loop()
                code = EXIT_OK
        finally:
            self._shutdown()
        if self.screen is not None:  # after the shutdown: copies in flight at a Ctrl-C are counted
            counts = self.catch_ups.totals()
            if code == EXIT_INTERRUPTED:
                self.screen.interrupted(counts)
            else:
                self.screen.finish(counts, time.monotonic() - self._started, len(self.admission.unusable))
        return code

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self.wakeup.signal(signum))

    def _check_watch_limit(self) -> None:
        self._rescan_every = checks.warn_watch_limit(self.log, tuple(s.config for s in self.folders.values()),
                                                     self.config.rescan_interval)
        if self._rescan_every != self.config.rescan_interval:
            self._next_rescan = time.monotonic() + self._rescan_every

    # -- main loop -------------------------------------------------------------
    def _main_loop(self) -> None:
        while True:
            sig = self.wakeup.wait(self._next_wait(time.monotonic()))
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.log.info("daemon_stopping", signal=signal.Signals(sig).name)
                return
            if sig == signal.SIGHUP:
                self._reload()
            self._tick()

    def _next_wait(self, now: float) -> float | None:
        """Seconds until the main loop has something to do (None: nothing until woken).

        While there is work (a catch-up, a walk, a path pending or in flight) it ticks every
        TICK. Idle, it sleeps until the earliest deadline, and whatever hands it new work
        from another thread wakes it: the ChangeQueue, a catch-up request, the pool's
        worker monitor, the watcher (observer exit, root lost, suspect directories).
        """
        self.wakeup.arm()  # before looking: work handed over meanwhile wakes the wait
        due = self.changes.next_due()
        if ((due is not None and due <= now) or not self.catch_ups.reconciler.idle() or self.catch_ups.active()
                or self.pruner.active()):
            self.wakeup.disarm()
            return TICK
        deadlines = [d for d in (due, self.view.repeats.next_due(), self.health.deadline(), self.links.deadline(),
                                 self.pruner.deadline()) if d is not None]
        if self._ping_every:
            deadlines.append(self._last_ping + self._ping_every)
        if self._rescan_every:
            deadlines.append(self._next_rescan)
        if self._status_text() != self._last_status:
            deadlines.append(self._last_progress + PROGRESS_INTERVAL)
        wait = min(deadlines) - now if deadlines else None
        self.wakeup.arm(long=wait is None or wait > PROGRESS_INTERVAL)
        if wait is not None and wait <= 0:
            # A deadline already past is one the last pass chose not to act on (a watchdog
            # ping withheld while unhealthy): look again at the working pace.
            return TICK
        return wait

    def _run_once(self) -> int:
        """`sync`: tick until every catch-up has ended (or Ctrl-C), redrawing the bar between ticks."""
        next_tick = time.monotonic() + TICK
        while True:
            # `sync` has no deadlines of its own: it follows the catch-up at TICK, the bar at REDRAW.
            if self.wakeup.wait(REDRAW if self.screen is not None and self.screen.bar else TICK) == signal.SIGINT:
                self._draw(f"interrupted: stopping; copies in flight may take up to {self.config.stop_grace:g}s")
                return EXIT_INTERRUPTED
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self._tick()
                if not self.catch_ups.active():
                    break
            self._draw()
        failed = total(self.view.all_stats()).failed
        return EXIT_FAILURE if failed or self.admission.unusable else EXIT_OK

    def _draw(self, note: str = "") -> None:
        if self.screen is not None:
            self.screen.update(self.catch_ups.totals(), note)

    def _tick(self) -> None:
        now = time.monotonic()
        rescan = bool(self._rescan_every) and now >= self._next_rescan and not self.once
        self.pipeline.supervise()
        self.links.tick(now)
        self.health.tick(now, rescan)
        self.catch_ups.finish(now)
        self.view.log_repeats()
        if not self.once:
            self.pruner.tick(now)  # bounded: PRUNE_BUDGET entries a tick
        if rescan:
            self._next_rescan = now + self._rescan_every
            for name, state in self.folders.items():
                if state.config.remote is None or self.links.up(state.config.remote.link):
                    self.catch_ups.request(name, "rescan")
        self._report(now)

    def _report(self, now: float) -> None:
        healthy = self.health.stable(now) and self.pipeline.healthy()
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
        if self.screen is None or not self.screen.bar:
            self.catch_ups.report()

    def _status_text(self) -> str:
        return status_line(self.model.snapshot(brief=True))

    def _drop_folder(self, name: str, problem: str, fix: str) -> None:
        """Stop serving a folder whose target another process took (WatchHealth found it)."""
        state = self.folders.get(name)
        if state is not None:
            self._stop_serving(name)
            self.admission.refuse(state.config, problem, fix)

    def _stop_serving(self, name: str, keep_lock: bool = False) -> None:
        if self.health.watcher is not None:
            self.health.watcher.remove(name)
        self.admission.withdraw(name, keep_lock=keep_lock)
        self.pipeline.forget(name)

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
        checks.warn_private_tmp(self.log, new)
        filters.warn_meaning_changed(self.log, new.folders)
        # Compared with what is served, so a folder that was unusable is tried again.
        plan = reload_plan({n: s.config for n, s in self.folders.items()}, new.folders)
        for name in plan.stopped:
            # Released before admitting (another folder may now name that target); a folder
            # changed but kept on its target keeps its lock, without a gap.
            self._stop_serving(name, keep_lock=name not in plan.released)
        self.admission.reset()
        self.admission.ssh = new.ssh
        admitted = self.admission.admit(plan.to_admit)
        self.admission.release_unserved()
        ignored = self.config.needs_restart(new)
        if new.rescan_interval != self.config.rescan_interval:
            self._next_rescan = time.monotonic() + new.rescan_interval
        self.config = new
        self.links.configure(new.ssh)
        self._check_watch_limit()
        fresh = {f.name: f for f in new.folders}
        if any(fresh[name].versions is not None for name in admitted):
            self.pruner.soon()
        for name in admitted:
            self.health.add(fresh[name])
            remote = fresh[name].remote
            if remote is None or self.links.up(remote.link):
                self.catch_ups.request(name, "reload")
        unusable = sorted(self.admission.unusable)
        self.log.info("config_reloaded", config=str(new.path), added=list(plan.added), removed=list(plan.removed),
                      changed=list(plan.changed),
                      **({"unusable": unusable} if unusable else {}),
                      **({"needs_restart": ignored} if ignored else {}))
        self.notifier.ready(self._status_text())

    # -- shutdown -------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.view.stop()
        self.health.stop()
        self.catch_ups.reconciler.stop()
        abandoned = self.pipeline.stop(self.config.stop_grace)
        self.links.stop()  # after the workers: an rsync in flight keeps its master to the end
        self.admission.release_all()  # no worker writes any more: another daemon may take over
        self.view.log_repeats(flush=True)
        done = total(self.view.all_stats())
        self.log.info("daemon_stopped", files_mirrored=done.files, bytes_mirrored=done.bytes, deleted=done.deleted,
                      failed=done.failed, abandoned=abandoned)
        self.notifier.close()

