"""One typed snapshot of the running daemon, built from its parts: what `status`, the metrics
and the STATUS= line all read, so each number and each folder's health is derived once.

`ReadModel.snapshot()` runs on whichever thread asks (control socket, metrics scrape, main
loop). The parts it reads are updated on other threads; each value it takes was true a
moment ago, which is all a status report promises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from foldermirror import __version__, checks
from foldermirror.folderstate import CatchUp, FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.folder_stats import FolderStats, LastError, Tally, total
from foldermirror.pipeline.watch_health import Watching
from foldermirror.remote.links import LinkView
from foldermirror.versioning import VersionsView

UNREADABLE_SHOWN = 5  # unreadable directories named in `status` (all are counted)
WATCH_LIMIT_TTL = 30.0  # seconds a read of the inotify watch limit is trusted


class Health(StrEnum):
    IN_SYNC = "in_sync"
    CATCHING_UP = "catching_up"
    DEGRADED = "degraded"
    REMOTE_DOWN = "remote_down"   # a remote target's host cannot be reached: changes wait


@dataclass(frozen=True)
class CatchUpView:
    reason: str
    files_mirrored: int  # files and symlinks copied so far
    to_copy: int         # what the comparison found to copy (0 until it is done)
    differences: int     # everything it found: directories and deletions too
    walk_done: bool
    elapsed_s: float


@dataclass(frozen=True)
class FolderView:
    name: str
    source: str
    target: str
    state: Health
    problems: tuple[str, ...]
    watches_complete: bool
    pending: int
    in_flight: int
    lag_s: float
    files_mirrored: int
    bytes_mirrored: int
    deleted: int
    failed: int
    failing: int
    failures: dict[str, int]
    last_error: LastError | None
    watched_directories: int | None
    unreadable: tuple[str, ...]
    catch_up: CatchUpView | None
    last_full_comparison: float | None  # wall clock (FolderStats.last_full_comparison)
    link: LinkView | None = None
    versions: VersionsView | None = None   # None: versions are off for this folder


@dataclass(frozen=True)
class DaemonView:
    version: str
    pid: int
    config: str
    started: float      # wall clock
    uptime_s: float
    workers: int
    worker_restarts: int
    overflow_rescans: int
    watcher_alive: bool
    watch_problems: tuple[str, ...]   # the observer's own health (see WatchHealth.problems)
    control_socket: str | None
    metrics: str | None
    unusable: tuple[str, ...]
    max_user_watches: int | None      # fs.inotify.max_user_watches (None: it cannot be read)
    folders: tuple[FolderView, ...]
    totals: Tally                     # every folder since start, removed ones included

    def to_json(self) -> dict[str, Any]:
        """The `status --json` document (README, "Watching it")."""
        return {
            "version": self.version, "pid": self.pid, "config": self.config, "started": iso(self.started),
            "uptime_s": round(self.uptime_s, 3), "workers": self.workers, "worker_restarts": self.worker_restarts,
            "overflow_rescans": self.overflow_rescans, "watcher_alive": self.watcher_alive,
            "control_socket": self.control_socket, "metrics": self.metrics,
            "folders": [_folder_json(f) for f in self.folders],
        }


def _folder_json(f: FolderView) -> dict[str, Any]:
    last = f.last_error
    return {
        "name": f.name, "source": f.source, "target": f.target, "state": str(f.state), "problems": list(f.problems),
        "pending": f.pending, "in_flight": f.in_flight, "lag_s": round(f.lag_s, 3),
        "files_mirrored": f.files_mirrored, "bytes_mirrored": f.bytes_mirrored, "deleted": f.deleted,
        "failed": f.failed, "failing": f.failing, "failures": dict(f.failures),
        "last_error": None if last is None else {"path": last.path, "error": last.error, "errno": last.errno,
                                                 "time": iso(last.at)},
        "watches_complete": f.watches_complete, "watched_directories": f.watched_directories,
        "unreadable": {"count": len(f.unreadable), "paths": list(f.unreadable[:UNREADABLE_SHOWN])},
        "catch_up": None if f.catch_up is None else {**asdict(f.catch_up),
                                                     "elapsed_s": round(f.catch_up.elapsed_s, 3)},
        "last_full_comparison": None if f.last_full_comparison is None else iso(f.last_full_comparison),
        "link": None if f.link is None else {**asdict(f.link), "since_s": round(f.link.since_s, 3)},
        "versions": None if f.versions is None else {
            "count": f.versions.count, "bytes_kept": f.versions.bytes, "counted": f.versions.counted,
            "oldest": None if f.versions.oldest_ns is None else iso(f.versions.oldest_ns / 1e9)},
    }


class ReadModel:
    """Builds DaemonView from the parts, wired once by the service."""

    def __init__(self, *, config: Callable[[], Any], folders: Mapping[str, FolderState],
                 folder_stats: Callable[[str], FolderStats], all_stats: Callable[[], list[FolderStats]],
                 changes: ChangeQueue, watching: Callable[[], Watching | None],
                 watch_problems: Callable[[], list[str]], overflows: Callable[[], int], restarts: Callable[[], int],
                 unusable: Callable[[], list[str]], addresses: Callable[[], tuple[str | None, str | None]],
                 started: float, started_wall: float,
                 link: Callable[[Any], LinkView | None] = lambda f: None,
                 versions: Callable[[str], VersionsView | None] = lambda name: None) -> None:
        self._config = config
        self._folders = folders
        self._folder_stats = folder_stats
        self._all_stats = all_stats
        self._changes = changes
        self._watching = watching
        self._watch_problems = watch_problems
        self._overflows = overflows
        self._restarts = restarts
        self._unusable = unusable
        self._addresses = addresses
        self._link = link  # a folder config → its remote link's view (None: a local target)
        self._versions = versions  # a folder's versions counts (None: versions off)
        self.started = started
        self.started_wall = started_wall
        self._watch_limit_value: int | None = None
        self._watch_limit_at = 0.0

    def snapshot(self, brief: bool = False) -> DaemonView:
        """The daemon now. `brief` (the STATUS= line, asked on every pass of the main loop)
        leaves out what costs a look at every pending path: each folder's lag is 0."""
        now = time.monotonic()
        watching = self._watching()
        states = dict(self._folders)
        stats = {name: self._folder_stats(name) for name in states}
        directories = sum(s.directories or 0 for s in stats.values())
        limit = self._watch_limit(now)
        shortage = checks.watch_shortage_of(directories, limit)
        folders = tuple(self._folder(name, state, stats[name], watching, shortage, now, brief)
                        for name, state in states.items())
        config = self._config()
        control, metrics = self._addresses()
        return DaemonView(
            version=__version__, pid=os.getpid(), config=str(config.path), started=self.started_wall,
            uptime_s=now - self.started, workers=config.workers, worker_restarts=self._restarts(),
            overflow_rescans=self._overflows(), watcher_alive=watching is not None and watching.alive,
            watch_problems=tuple(self._watch_problems()), control_socket=control, metrics=metrics,
            unusable=tuple(sorted(self._unusable())), max_user_watches=limit, folders=folders,
            totals=total(self._all_stats()))

    def _watch_limit(self, now: float) -> int | None:
        """fs.inotify.max_user_watches, read again at most every WATCH_LIMIT_TTL seconds."""
        if now >= self._watch_limit_at:
            self._watch_limit_value = checks.max_user_watches()
            self._watch_limit_at = now + WATCH_LIMIT_TTL
        return self._watch_limit_value

    def _folder(self, name: str, state: FolderState, stats: FolderStats, watching: Watching | None,
                shortage: checks.WatchShortage | None, now: float, brief: bool) -> FolderView:
        f = state.config
        pending, in_flight = self._changes.counts(name)
        c = state.catch_up
        link = self._link(f)
        state_, problems, complete = health(state, stats, watching, shortage, link)
        return FolderView(
            name=name, source=str(f.source), target=str(f.target), state=state_, problems=problems,
            watches_complete=complete, pending=pending, in_flight=in_flight,
            lag_s=0.0 if brief else self._changes.oldest_age(name),
            files_mirrored=stats.files, bytes_mirrored=stats.bytes, deleted=stats.deleted, failed=stats.failed,
            failing=len(stats.failing), failures=dict(stats.failures), last_error=stats.last_error,
            watched_directories=stats.directories, unreadable=stats.unreadable,
            catch_up=None if c is None else _catch_up(c, stats, now),
            last_full_comparison=stats.last_full_comparison, link=link,
            versions=self._versions(name) if f.versions is not None else None)


def _catch_up(c: CatchUp, stats: FolderStats, now: float) -> CatchUpView:
    return CatchUpView(reason=c.reason, files_mirrored=stats.tally().since(c.start).files, to_copy=c.to_copy,
                       differences=c.differences, walk_done=c.walk_done, elapsed_s=now - c.started)


def health(state: FolderState, stats: FolderStats, watching: Watching | None,
           shortage: checks.WatchShortage | None,
           link: LinkView | None = None) -> tuple[Health, tuple[str, ...], bool]:
    """The one rule for a folder's health: (state, problems, watches complete).

    Remote down while a remote target's host cannot be reached (the changes wait); degraded
    when something needs the operator (a source missing, watches incomplete, unreadable
    directories, paths failing); catching up while a comparison is worked off; in sync
    otherwise. A link still connecting at start-up is no problem yet. Watches are set up before the start-up walk ends, so a watcher that
    is not up yet during that walk is not a problem.
    """
    f = state.config
    c = state.catch_up
    problems: list[str] = []
    starting = watching is None or (not watching.alive and c is not None and c.reason == "startup"
                                    and not c.walk_done)
    if state.missing:
        problems.append(f"source folder {f.source} is missing")
    elif not starting and watching is not None and (not watching.alive or not watching.watched(f.name)):
        problems.append("not watched: changes are only seen by rescans")
    if state.target_lost:
        problems.append(f"target folder {f.target} is gone and cannot be made again")
    if stats.unreadable:
        problems.append(unreadable_text(stats.unreadable))
    if shortage is not None:
        problems.append(f"{shortage.needed:,} directories but {checks.WATCHES_SYSCTL} is {shortage.limit:,}: "
                        f"raise it to at least {shortage.suggested:,}")
    complete = not problems and not starting  # so far, every problem is one of watching
    failing = len(stats.failing)
    if failing:
        problems.append(f"{failing:,} {'path' if failing == 1 else 'paths'} failing")
    down = link is not None and link.state == "down"
    if down and link is not None:
        retry = f"; retrying in {link.retry_in_s:.0f}s" if link.retry_in_s is not None else ""
        problems.append(f"host {link.host} cannot be reached: {link.last_error}{retry}")
    state_ = (Health.REMOTE_DOWN if down else Health.DEGRADED if problems
              else Health.CATCHING_UP if c is not None else Health.IN_SYNC)
    return state_, tuple(problems), complete


def unreadable_text(paths: tuple[str, ...]) -> str:
    n = len(paths)
    shown = ", ".join(p or "." for p in paths[:UNREADABLE_SHOWN])
    more = f" and {n - UNREADABLE_SHOWN:,} more" if n > UNREADABLE_SHOWN else ""
    return (f"{n:,} {'directory cannot' if n == 1 else 'directories cannot'} be read, so "
            f"{'it is' if n == 1 else 'they are'} neither watched nor mirrored: {shown}{more}")


def status_line(view: DaemonView) -> str:
    """The STATUS= text systemd shows: the first running catch-up, or what is watched."""
    catching = next((f for f in view.folders if f.catch_up is not None), None)
    if catching is not None:
        c = catching.catch_up
        assert c is not None
        if not c.walk_done:
            text = f"catching up {catching.name}: {c.files_mirrored:,} files copied, still comparing"
        else:
            text = f"catching up {catching.name}: {c.files_mirrored:,}/{max(c.to_copy, c.files_mirrored):,} files"
    else:
        n = len(view.folders)
        waiting = sum(f.pending + f.in_flight for f in view.folders)
        text = f"watching {n} folder{'' if n == 1 else 's'}, {waiting:,} pending, {view.totals.files:,} files mirrored"
    problems = list(view.watch_problems)
    degraded = [f.name for f in view.folders if f.state is Health.DEGRADED]
    if degraded:
        problems.append(f"{len(degraded)} degraded ({', '.join(degraded)})")
    down = [f.name for f in view.folders if f.state is Health.REMOTE_DOWN]
    if down:
        problems.append(f"{len(down)} remote down ({', '.join(down)})")
    if view.unusable:
        problems.append(f"{len(view.unusable)} unusable ({', '.join(view.unusable)})")
    return "; ".join([text, *problems])


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
