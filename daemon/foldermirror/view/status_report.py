"""What `foldermirror status` shows: a snapshot of the running service, and its rendering.

`snapshot()` runs in the daemon (on the control thread) and returns plain JSON data;
`render()` runs in the `status` command and turns that data into a table.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from foldermirror import __version__
from foldermirror.pipeline.folder_stats import FolderStats

STATES = ("in_sync", "catching_up", "degraded")
MAX_WATCHES_FILE = "/proc/sys/fs/inotify/max_user_watches"


UNREADABLE_SHOWN = 5  # unreadable directories named in `status` (all are counted)


def unreadable_text(paths: tuple[str, ...]) -> str:
    n = len(paths)
    shown = ", ".join(p or "." for p in paths[:UNREADABLE_SHOWN])
    more = f" and {n - UNREADABLE_SHOWN:,} more" if n > UNREADABLE_SHOWN else ""
    return (f"{n:,} {'directory cannot' if n == 1 else 'directories cannot'} be read, so "
            f"{'it is' if n == 1 else 'they are'} neither watched nor mirrored: {shown}{more}")


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def max_user_watches() -> int | None:
    try:
        with open(MAX_WATCHES_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def snapshot(service: Any) -> dict[str, Any]:
    """Plain data about every folder of a running Service (see the README's "Watching it")."""
    watcher = service.watcher
    watcher_alive = watcher is not None and watcher.alive()
    folders = []
    states = dict(service.folders)
    all_stats = {name: service.folder_stats(name) for name in states}
    directories = sum(s.directories or 0 for s in all_stats.values())
    limit = max_user_watches()
    over_limit = limit is not None and directories > limit
    for name, state in states.items():
        folders.append(_folder(service, name, state, all_stats[name], watcher_alive, over_limit, directories, limit))
    return {
        "version": __version__,
        "pid": os.getpid(),
        "config": str(service.config.path),
        "started": iso(service.started_wall),
        "uptime_s": round(time.monotonic() - service.started, 3),
        "workers": service.config.workers,
        "worker_restarts": service.pipeline.restarts,
        "overflow_rescans": service.health.overflows,
        "watcher_alive": watcher_alive,
        "control_socket": str(service.control.path) if service.control is not None else None,
        "metrics": service.metrics.address if service.metrics is not None else None,
        "folders": folders,
    }


def _folder(service: Any, name: str, state: Any, stats: FolderStats, watcher_alive: bool,
            over_limit: bool, directories: int, limit: int | None) -> dict[str, Any]:
    f = state.config
    pending, in_flight = service.changes.counts(name)
    problems: list[str] = []
    c = state.catch_up
    # Watches are set up before the start-up walk is done (the main loop restarts a dead observer).
    starting = service.watcher is None or (not watcher_alive and c is not None and c.reason == "startup"
                                           and not c.walk_done)
    if state.missing:
        problems.append(f"source folder {f.source} is missing")
    elif not starting and (not watcher_alive or not service.watcher.watched(name)):
        problems.append("not watched: changes are only seen by rescans")
    if stats.unreadable:
        problems.append(unreadable_text(stats.unreadable))
    if over_limit:
        problems.append(f"{directories:,} directories but fs.inotify.max_user_watches is {limit:,}: "
                        f"raise it to at least {directories + directories // 10:,}")
    watches_complete = not problems and not starting  # so far, every problem is one of watching
    failing = len(stats.failing)
    if failing:
        problems.append(f"{failing:,} {'path' if failing == 1 else 'paths'} failing")
    last = stats.last_error
    return {
        "name": name,
        "source": str(f.source),
        "target": str(f.target),
        "state": "degraded" if problems else "catching_up" if c is not None else "in_sync",
        "problems": problems,
        "pending": pending,
        "in_flight": in_flight,
        "lag_s": round(service.changes.oldest_age(name), 3),
        "files": stats.files,
        "bytes": stats.bytes,
        "deleted": stats.deleted,
        "failed": stats.failed,
        "failing": failing,
        "failures": dict(stats.failures),
        "last_error": None if last is None else {"path": last.path, "error": last.error, "kind": last.kind,
                                                 "time": iso(last.at)},
        "watches_complete": watches_complete,
        "watched_directories": stats.directories,
        "unreadable": {"count": len(stats.unreadable), "paths": list(stats.unreadable[:UNREADABLE_SHOWN])},
        "catch_up": None if c is None else {"reason": c.reason, "files": stats.tally().since(c.start).files,
                                            "to_copy": c.to_copy,
                                            "differences": c.differences,
                                            "walk_done": c.walk_done,
                                            "seconds": round(time.monotonic() - c.started, 3)},
    }


# -- rendering (the `status` command) --------------------------------------------------------
def render(snap: dict[str, Any]) -> str:
    head = (f"foldermirror {snap['version']}, pid {snap['pid']}, up {duration(snap['uptime_s'])}, "
            f"{snap['workers']} workers, config {snap['config']}")
    columns = ("FOLDER", "STATE", "PENDING", "IN FLIGHT", "LAG", "MIRRORED", "BYTES", "DELETED", "FAILED",
               "WATCHES")
    rows = [[f["name"], f["state"].replace("_", " "), f"{f['pending']:,}", f"{f['in_flight']:,}",
             duration(f["lag_s"]), f"{f['files']:,}", size(f["bytes"]), f"{f['deleted']:,}", f"{f['failed']:,}",
             "complete" if f["watches_complete"] else "INCOMPLETE"] for f in snap["folders"]]
    widths = [max(len(r[i]) for r in [list(columns), *rows]) for i in range(len(columns))]
    right = {2, 3, 5, 7, 8}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [head, "", line(list(columns)).rstrip(), *(line(r).rstrip() for r in rows)]
    notes = []
    for f in snap["folders"]:
        c = f["catch_up"]
        if c is not None:
            total = max(c["to_copy"], c["files"])
            walk = "" if c["walk_done"] else ", still comparing"
            done = f"{c['files']:,} of {total:,} files copied{walk}"
            notes.append(f"{f['name']}: catching up ({c['reason']}): {done}")
        for problem in f["problems"]:
            notes.append(f"{f['name']}: {problem}")
        e = f["last_error"]
        if e is not None:
            notes.append(f"{f['name']}: last error {e['time']} {e['path']}: {e['error']}")
    if notes:
        out += ["", *notes]
    if snap["worker_restarts"] or snap["overflow_rescans"]:
        out += ["", f"worker restarts: {snap['worker_restarts']}, overflow rescans: {snap['overflow_rescans']}"]
    return "\n".join(out)


def duration(seconds: float) -> str:
    if seconds < 1:
        return "0s" if seconds <= 0 else f"{seconds * 1000:.0f}ms"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
