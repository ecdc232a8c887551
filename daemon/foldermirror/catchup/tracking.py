"""Catch-ups: comparing a folder with its target and following it until the differences are mirrored.

`CatchUpTracker` owns the Reconciler thread and its walk (which feeds the ChangeQueue, holding
back deletions that look like a failed mount), the per-folder `CatchUp` records, their
`sync_progress` / `sync_finished` lines, the counts `sync`'s progress bar is drawn from
(`totals`), and giving memory back after a big one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

from foldermirror import memory
from foldermirror.catchup.compare import (
    Reconciler,
    Request,
    WalkStats,
    covers,
    diff_tree,
    hold_deletions,
    source_links,
)
from foldermirror.config import FolderConfig
from foldermirror.folderstate import CatchUp, FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.copier import describe
from foldermirror.pipeline.folder_stats import FolderStats, Tally
from foldermirror.pipeline.inodes import InodeNames
from foldermirror.pipeline.pool import process_alive
from foldermirror.pipeline.records import RemoteSpec
from foldermirror.remote.compare import LinkDown, diff_remote

SYNC_FIXES = {
    "reconcile_failed": "check that the source and target folders are readable by the service user, then run "
                        "sync again",
    "source_unreadable": "give the service user read and execute permission on that directory (chmod, chown or "
                         "an ACL), then run sync again",
}
# A catch-up with this many differences leaves enough freed memory to give back once it ends.
RELEASE_AFTER = 1000


class SyncCounts(NamedTuple):
    """Every served folder's comparison and catch-up so far, summed: what `sync`'s bar shows."""

    comparing: bool    # some folder's whole-folder walk has not finished (or not begun)
    entries: int       # source entries compared so far
    to_copy: int       # files and symlinks found to differ so far
    bytes_to_copy: int
    files: int         # files and symlinks mirrored so far
    bytes: int
    deleted: int
    failed: int


class CatchUpTracker:
    """Requests comparisons, runs their walks (on the Reconciler thread) and tells when each ends."""

    def __init__(self, *, log: Any, changes: ChangeQueue, folders: Mapping[str, FolderState], lock: threading.RLock,
                 instance: str, folder_stats: Callable[[str], FolderStats], wake: Callable[[], None],
                 once: bool = False, inodes: InodeNames | None = None) -> None:
        self.log = log
        self.changes = changes
        # How a remote folder's target is reached now (the links' supervisor sets it).
        self.remote_spec: Callable[[FolderConfig], RemoteSpec | None] = lambda f: None
        self.folders = folders
        self._lock = lock  # Admission's: guards `folders` and each folder's catch_up
        self.instance = instance
        self.folder_stats = folder_stats
        self.wake = wake
        self.once = once  # `sync`: no reload and no next rescan to point people to
        self.inodes = inodes if inodes is not None else InodeNames()  # hard links: each walk tells it the names
        self.reconciler = Reconciler(self._walk)
        self._release_memory = False
        self._ended: dict[str, CatchUp] = {}  # each folder's last finished catch-up, for totals()

    def _link_seen(self, folder: str, inode: tuple[int, int], path: str) -> None:
        if not self.inodes.seen(folder, inode, path) and self.inodes.full(folder):
            self.log.warning("hardlinks_map_full", folder=folder, path=path, names=self.inodes.max_names,
                             error=f"the daemon keeps the names of at most {self.inodes.max_names:,} multi-linked "
                                   "files; files with other names not known are mirrored as copies",
                             fix="nothing to do if copies are acceptable; else mirror fewer multi-linked files in "
                                 "one daemon (split the folders across daemons) or leave hardlinks out of preserve:")

    def _new(self, name: str, reason: str) -> CatchUp:
        return CatchUp(reason, time.monotonic(), self.folder_stats(name).tally())

    def done(self, name: str, c: CatchUp) -> Tally:
        """What the folder mirrored, deleted and failed since catch-up `c` began."""
        return self.folder_stats(name).tally().since(c.start)

    def active(self) -> bool:
        """A catch-up is running in some folder."""
        return any(s.catch_up is not None for s in self.folders.values())

    def begin(self, reason: str) -> None:
        """Every folder counts as catching up from now on, before its walk is requested."""
        with self._lock:
            for name, state in self.folders.items():
                state.catch_up = state.catch_up or self._new(name, reason)

    def request(self, name: str, reason: str) -> None:
        """Compare the folder with its target (again, if a catch-up is running: it goes on)."""
        with self._lock:
            state = self.folders.get(name)
            if state is None:
                return
            if state.catch_up is None:
                state.catch_up = self._new(name, reason)
            else:
                state.catch_up.walk_done = False
        self.reconciler.request(Request(name, "", reason, ready=True))
        self.wake()

    def _walk(self, req: Request) -> None:
        state = self.folders.get(req.folder)
        if state is None:
            return
        f = state.config
        stats = WalkStats()
        if req.sub == "":
            with self._lock:
                if state.catch_up is not None:
                    state.catch_up.walk = stats
        rebuilding = False  # hard links: this walk replaces the folder's inode names
        extras: list[str] = []
        complete = False  # the walk got to its end
        # What an overflow's comparison finds stands in for events the kernel dropped: live
        # changes (a save among them), not a catch-up's bulk.
        bulk = req.reason != "overflow"
        try:
            if f.remote is not None:
                spec = self.remote_spec(f)
                assert spec is not None
                if "hardlinks" in f.preserve:
                    if req.sub == "":
                        self.inodes.begin_walk(f.name)
                        rebuilding = True
                    source_links(str(f.source), state.excluder, partial(self._link_seen, f.name), req.sub)
                diffs = diff_remote(str(f.source), spec, sub=req.sub, delete=f.delete, excluded=state.excluder,
                                    stats=stats, hardlinks="hardlinks" in f.preserve)
            else:
                links = None
                if "hardlinks" in f.preserve:
                    if req.sub == "":
                        self.inodes.begin_walk(f.name)
                        rebuilding = True
                    links = partial(self._link_seen, f.name)
                skip: Callable[[str], bool] | None = None
                if req.only_unknown:
                    skip = partial(self.changes.looked_at_since, f.name, since=req.since)
                elif req.reason == "overflow":
                    # The burst that overflowed the kernel's queue is mostly still queued here:
                    # a path waiting for a worker is read by it later anyway, and comparing it
                    # now (a stat and the attributes of both sides) is the walk's main cost.
                    # One in flight is compared: its worker may have read it before a change
                    # whose event the overflow dropped.
                    skip = partial(self.changes.pending, f.name)
                diffs = diff_tree(str(f.source), str(f.target), state.excluder, f.delete, self.instance,
                                  sub=req.sub, stats=stats, writer_alive=process_alive, preserve=f.preserve,
                                  links=links, skip=skip)
            for diff in diffs:
                if diff.reason == "extra":
                    extras.append(diff.path)  # judged once the walk has seen everything
                elif req.only_unknown and self.changes.known(f.name, diff.path):
                    continue
                else:
                    self.changes.wait_for_room()
                    self.changes.touch(f.name, diff.path, settle=f.settle, ready=req.ready, bulk=bulk)
            if extras and req.sub == "" and hold_deletions(stats, f.max_delete_fraction):
                self._hold_deletions(f, req, stats)
                stats.differences -= len(extras)
                extras = []
            for path in extras:
                self.changes.wait_for_room()
                self.changes.touch(f.name, path, settle=f.settle, ready=req.ready, bulk=bulk)
            complete = True
        except LinkDown as exc:
            # Compared again once the link is back (Links asks for it).
            self.log.warning("reconcile_deferred", folder=f.name, path=req.sub, error=str(exc))
        except OSError as exc:
            self.log.error("reconcile_failed", folder=f.name, path=req.sub, error=describe(exc),
                           **self._sync_fix("reconcile_failed"))
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop later walks
            self.log.error("reconcile_failed", folder=f.name, path=req.sub, error=repr(exc),
                           **self._sync_fix("reconcile_failed"))
        if rebuilding:
            self.inodes.end_walk(f.name, complete and not stats.unreadable)
        for rel in stats.unreadable or ():
            self.log.warning("source_unreadable", folder=f.name, path=rel,
                             error="permission denied listing this directory; its files are not mirrored",
                             **self._sync_fix("source_unreadable"))
        fs = self.folder_stats(f.name)
        found = tuple(sorted(stats.unreadable or ()))
        if req.sub == "":
            fs.directories, fs.unreadable = stats.directories, found
        elif fs.unreadable or found:  # what this walk covered is now known afresh
            fs.unreadable = tuple(sorted((*(p for p in fs.unreadable if not covers(req.sub, p)), *found)))
        if stats.stale_temps:
            self.log.info("stale_temps_removed", folder=f.name, count=stats.stale_temps)
        self.log.debug("reconcile_walked", folder=f.name, path=req.sub, reason=req.reason,
                       entries=stats.entries, differences=stats.differences)
        if req.sub == "" and req.reason != "hardlinks":  # that one looks for names, for the pipeline
            with self._lock:
                c = state.catch_up
                if c is not None:
                    c.walk_done = True
                    c.compared = complete
                    c.differences += stats.differences
                    c.to_copy += stats.copies
                    c.bytes_to_copy += stats.copy_bytes
                    c.entries += stats.entries
                    c.walk = None

    def _sync_fix(self, event: str) -> dict[str, str]:
        """`sync`'s own fix for `event`; a daemon's (logs.FIXES) counts on the next rescan."""
        return {"fix": SYNC_FIXES[event]} if self.once else {}

    def _hold_deletions(self, f: FolderConfig, req: Request, stats: WalkStats) -> None:
        looks = "looks empty" if stats.entries == 0 else "lost most of what its target holds"
        self.log.error("mass_delete_held", folder=f.name, path=str(f.source), reason=req.reason,
                       source_entries=stats.entries, target_entries=stats.target_entries,
                       would_delete=stats.doomed, max_delete_fraction=f.max_delete_fraction,
                       error=f"the source {looks} (a failed mount or a wrong path?); "
                             f"deletions in the target are held back, copies go on",
                       fix=f"if the deletions are intended, set max_delete_fraction: 1 for folder {f.name} "
                           + ("and run sync again" if self.once else "and reload (systemctl reload foldermirror)")
                           + ", then set it back")

    def finish(self, now: float) -> None:
        """End each catch-up whose walk is done and whose folder has settled."""
        for name, state in self.folders.items():
            c = state.catch_up
            if c is None or not c.walk_done or not self.changes.settled(name):
                continue
            with self._lock:
                state.catch_up = None
                self._ended[name] = c
            if c.compared:  # the foldermirror_last_full_comparison_timestamp_seconds metric
                self.folder_stats(name).last_full_comparison = time.time()
            done = self.done(name, c)
            self.log.info("sync_finished", folder=name, reason=c.reason, files_mirrored=done.files,
                          bytes_mirrored=done.bytes, failed=done.failed, differences=c.differences,
                          elapsed_s=round(now - c.started, 3))
            self._release_memory = self._release_memory or c.differences >= RELEASE_AFTER
        if self._release_memory and not self.active():
            self._release_memory = False
            self.changes.prune()
            memory.release()

    def report(self) -> None:
        """One `sync_progress` line per running catch-up."""
        for name, state in self.folders.items():
            c = state.catch_up
            if c is None:
                continue
            pending, in_flight = self.changes.counts(name)
            done = self.done(name, c)
            self.log.info("sync_progress", folder=name, files_mirrored=done.files, bytes_mirrored=done.bytes,
                          pending=pending, in_flight=in_flight, walk_done=c.walk_done)

    def totals(self) -> SyncCounts:
        """What the comparisons found and the catch-ups did, over every served folder: the
        running catch-up's counts (its walk's so far), else the last finished one's. A folder
        not compared yet (a remote one waiting for its link; none admitted yet) is still comparing."""
        comparing = not self.folders
        entries = to_copy = bytes_to_copy = files = nbytes = deleted = failed = 0
        with self._lock:
            for name, state in self.folders.items():
                c = state.catch_up or self._ended.get(name)
                if c is None:
                    comparing = True
                    continue
                walk = c.walk
                comparing = comparing or not c.walk_done
                entries += c.entries + (walk.entries if walk is not None else 0)
                to_copy += c.to_copy + (walk.copies if walk is not None else 0)
                bytes_to_copy += c.bytes_to_copy + (walk.copy_bytes if walk is not None else 0)
                done = self.done(name, c)
                files, nbytes = files + done.files, nbytes + done.bytes
                deleted, failed = deleted + done.deleted, failed + done.failed
        return SyncCounts(comparing, entries, to_copy, bytes_to_copy, files, nbytes, deleted, failed)
