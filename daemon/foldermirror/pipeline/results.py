"""Worker outcomes → log lines, counts and retries (run on the pool's result collector thread).

`ResultRecorder.on_results` is the pool's results callback: one `file_mirrored`,
`file_deleted`, `mirror_failed`… line per outcome, the folder's FolderStats fed, failed
paths queued again with a backoff (unless permanent or `sync`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from foldermirror.catchup.compare import Request
from foldermirror.config import FolderConfig
from foldermirror.errors import PERMANENT_ERRNOS, error_kind, fix_for
from foldermirror.folderstate import FolderState
from foldermirror.logs import Repeats, batch
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.inodes import InodeNames
from foldermirror.pipeline.pool import Result
from foldermirror.pipeline.records import Kept, Outcome, Status
from foldermirror.pipeline.versions import NOT_KEPT
from foldermirror.tempnames import LOCK_NAME, is_reserved

RETRY_MAX_DELAY = 300.0
# A batch that could not reach its host goes back into the queue for at least this long, so
# a link that fails while its master still looks up is not hammered batch after batch.
LINK_RETRY_DELAY = 2.0
# Hard links: inodes whose names are being looked for, kept at most (see _has_links).
SEEKING_MAX = 10_000

# What else hears of each outcome (the metrics' latency histogram, the debug trace).
Observe = Callable[[str, Outcome, float], None]
# A version was kept (folder, what): the folder's versions counts follow.
OnKept = Callable[[str, Kept], None]


class ResultRecorder:
    """Turns the results the pool collects into log lines, counts and retries."""

    def __init__(self, *, log: Any, changes: ChangeQueue, folders: Mapping[str, FolderState],
                 folder_stats: Callable[[str], FolderStats], repeats: Repeats, wake: Callable[[], None],
                 request_walk: Callable[[Request], None] = lambda req: None,
                 root_suspect: Callable[[], None] = lambda: None,
                 link_suspect: Callable[[str, str], None] = lambda folder, error: None,
                 observe: Observe = lambda folder, outcome, latency_ms: None, once: bool = False,
                 on_kept: OnKept = lambda folder, kept: None,
                 inodes: InodeNames | None = None) -> None:
        self.log = log
        self.changes = changes
        self.folders = folders
        self.folder_stats = folder_stats
        self.repeats = repeats
        self.request_walk = request_walk  # a directory's contents to compare (the Reconciler's request)
        self.walking: Callable[[], bool] = lambda: False  # a comparison is queued or running
        self.observe = observe
        self.on_kept = on_kept
        self.root_suspect = root_suspect  # a worker found a source root gone or replaced: look at the roots
        self.link_suspect = link_suspect  # a worker could not reach a folder's host: look at its link
        self.wake = wake
        self.once = once                  # `sync`: no retries, a changed root is a failure
        self.inodes = inodes if inodes is not None else InodeNames()  # hard links: the names of each inode
        self._attempts: dict[tuple[str, str], int] = {}
        self._busy: set[tuple[str, str]] = set()  # paths a file_busy line was written for, until mirrored
        # Hard links: the inodes (by folder) whose other names a comparison is looking for.
        self._seeking: set[tuple[str, tuple[int, int]]] = set()

    def on_results(self, results: list[Result], pid: int) -> None:
        # The paths leave flight only once their lines are written: whoever sees the folder
        # settled (sync_finished, status) also sees every line of what settled it. A remote
        # folder's next batch may go meanwhile (ChangeQueue.serial): its worker is free.
        for folder in {r.item.folder for r in results}:
            self.changes.landed(folder)
        try:
            with batch():
                for r in results:
                    try:
                        self._record(r, pid)
                    except Exception as exc:  # noqa: BLE001 - one bad result must not strand the others
                        self.log.error("internal_error", folder=r.item.folder, path=r.item.path, error=repr(exc))
        finally:
            self.changes.done_all([r.item for r in results])

    def _record(self, r: Result, pid: int) -> None:
        item = r.item
        state = self.folders.get(item.folder)
        if state is None:
            return
        f = state.config
        stats = self.folder_stats(f.name)
        latency_ms = round((self.changes.clock() - item.first_seen) * 1000, 3)  # first_seen is on its clock
        if item.walk:  # a directory moved here: its contents, however the move was replayed
            self.request_walk(Request(f.name, item.path, "subtree", ready=True))
        for o in r.outcomes:
            if o.status is Status.ROOT_CHANGED and self.once:
                o = o._replace(status=Status.FAILED)  # no watcher to wait for it: `sync` fails the path
            if o.status is Status.HAS_LINKS:  # nothing done yet: sent again with its inode's names
                self._has_links(f, o)
                continue
            stats.record(o)
            self.observe(f.name, o, latency_ms)
            if o.inode is not None and "hardlinks" in f.preserve:
                self._linked(f, o, checked=item.link_to is not None)
            key = (item.folder, o.path)
            kept: dict[str, Any] = {}
            if o.version_kept is not None:
                kept["version_kept"] = o.version_kept.path
                if o.version_kept.dirs or o.version_kept.files != 1:  # a directory's: what it held
                    kept["versions_kept"] = o.version_kept.files
                if o.version_kept.dirs:
                    kept["dirs_kept"] = o.version_kept.dirs
                self.on_kept(f.name, o.version_kept)
            if o.status.mirrored:
                self._attempts.pop(key, None)
                self._busy.discard(key)
                extra: dict[str, Any] = {"renamed_from": o.renamed_from} if o.renamed_from is not None else {}
                extra.update(kept)
                if item.busy and o.kind == "file":
                    extra["busy"] = True  # published while still being written (see max_delay)
                if o.linked_to is not None:
                    extra["linked_to"] = o.linked_to  # a hard link of that name's mirror, no bytes copied
                self.log.info("file_mirrored", folder=f.name, path=o.path, kind=o.kind, bytes=o.bytes,
                              duration_ms=round(r.duration_ms, 3), latency_ms=latency_ms, worker_pid=pid, **extra)
                if o.status is Status.RENAMED and o.kind == "dir" and not item.walk:
                    self.request_walk(Request(f.name, o.path, "subtree", ready=True))
            elif o.status is Status.DELETED:
                self._attempts.pop(key, None)
                self.log.info("file_deleted", folder=f.name, path=o.path, kind=o.kind, latency_ms=latency_ms, **kept)
            elif o.status is Status.CHANGED:
                self.log.debug("file_changed_during_copy", folder=f.name, path=o.path)
                if item.busy and key not in self._busy:
                    self._busy.add(key)
                    self.log.warning(
                        "file_busy", folder=f.name, path=o.path, max_delay_s=f.max_delay,
                        error="the file keeps changing during its copy and is not only appended to; the "
                              "mirror keeps its last complete copy and tries again every max_delay",
                        fix="nothing to do if the file is rewritten in place on purpose (it is mirrored once "
                            "quiet); exclude it if a mirror of it is not wanted")
                self.changes.touch(f.name, o.path, settle=f.settle, max_delay=f.max_delay)
            elif o.status is Status.SKIPPED:
                reserved = is_reserved(o.path.rsplit("/", 1)[-1])
                extra = {"fix": f"rename it in the source: {LOCK_NAME} is never mirrored"} if reserved else {}
                self.log.warning("file_skipped", folder=f.name, path=o.path, kind=o.kind, error=o.error, **extra)
            elif o.status is Status.FAILED:
                self._failed(state, o)
            elif o.status is Status.ROOT_CHANGED:
                # Nothing was done for the path: the source root is gone or another folder stands there.
                self.log.debug("file_set_aside", folder=f.name, path=o.path, error=o.error)
                state.suspect = True
                self.root_suspect()
            elif o.status is Status.LINK_DOWN:
                # Nothing is known of the path: it waits, with the folder's other changes,
                # until the link is back (Links holds the folder meanwhile).
                self.log.debug("file_held", folder=f.name, path=o.path, error=o.error)
                later = self.changes.clock() + LINK_RETRY_DELAY
                for path in (o.path, item.origin) if item.origin is not None else (o.path,):
                    self.changes.touch(f.name, path, settle=f.settle, ready=True, not_before=later)
                self.link_suspect(f.name, o.error)
            elif o.status is Status.STALE:  # the comparison after the change that made it stale covers it
                self.log.debug("file_set_aside", folder=f.name, path=o.path, error="seen before the folder changed")
            else:
                self._attempts.pop(key, None)
                self.log.debug("file_checked", folder=f.name, path=o.path, status=str(o.status))

    # -- hard links ------------------------------------------------------------------------
    def _has_links(self, f: FolderConfig, o: Outcome) -> None:
        """A file with other names, its mirror missing or out of date: send it again with the
        names of its inode known to be (or about to be) mirrored, itself among them from now
        on, so that of two new names in one batch the second links to the first.

        An inode never seen (`ln a b` where a was mirrored with one name: inotify tells only
        of b, since a link-count change reaches no directory watch) has its other names
        looked for by a comparison of the whole folder (one for a burst of them: queued
        walks cover one another), which tells the map every multi-linked name and sends b
        again. Meanwhile b, and every other new name of that inode, is looked at every
        `settle` while comparisons run, then linked to what they found, or copied if they
        found no other name. An inode seen with no other name has them excluded or outside
        the folder: it is copied."""
        assert o.inode is not None
        seek = (f.name, o.inode)
        seeking = seek in self._seeking
        if seeking and self.walking():
            self._later(f, o.path)
            return
        self._seeking.discard(seek)
        known = self.inodes.known(f.name, o.inode)
        others = self.inodes.others(f.name, o.inode, o.path)
        self._keep(f, o.inode, o.path)
        self.log.debug("file_has_links", folder=f.name, path=o.path, link_to=list(others))
        if others or known or seeking:
            self.changes.touch(f.name, o.path, settle=f.settle, ready=True, link_to=others)
            return
        if len(self._seeking) >= SEEKING_MAX:  # paths gone since: forget them rather than grow
            self._seeking.clear()
        self._seeking.add(seek)
        self.request_walk(Request(f.name, "", "hardlinks", ready=True))
        self._later(f, o.path)

    def _later(self, f: FolderConfig, path: str) -> None:
        """Ask again in a while, without a link hint (the path comes back HAS_LINKS)."""
        self.changes.touch(f.name, path, settle=f.settle, ready=True,
                           not_before=self.changes.clock() + max(f.settle, 0.1))

    def _linked(self, f: FolderConfig, o: Outcome, checked: bool) -> None:
        """A name of a multi-linked inode is in place (`checked`: against its other names).

        Freshly copied (a new file, or one name rewritten in place), the inode's other
        mirrored names are another file now: each is made a link of this one. Found in
        place unchecked, it is sent again with its other names, as a mirror made of copies
        is another file per name."""
        assert o.inode is not None
        if o.renamed_from is not None:
            self.inodes.drop(f.name, o.inode, o.renamed_from)
        others = self.inodes.others(f.name, o.inode, o.path)
        self._keep(f, o.inode, o.path)
        if o.status is Status.COPIED and o.linked_to is None:
            for other in others:
                self.changes.touch(f.name, other, settle=f.settle, ready=True, link_to=(o.path,))
        elif o.status is Status.UNCHANGED and not checked and others:
            self.changes.touch(f.name, o.path, settle=f.settle, ready=True, link_to=others)

    def _keep(self, f: FolderConfig, inode: tuple[int, int], path: str) -> None:
        if not self.inodes.seen(f.name, inode, path) and self.inodes.full(f.name):
            self.log.warning("hardlinks_map_full", folder=f.name, path=path, names=self.inodes.max_names,
                             error=f"the daemon keeps the names of at most {self.inodes.max_names:,} multi-linked "
                                   "files; files with other names not known are mirrored as copies",
                             fix="nothing to do if copies are acceptable; else mirror fewer multi-linked files in "
                                 "one daemon (split the folders across daemons) or leave hardlinks out of preserve:")

    def _failed(self, state: FolderState, o: Outcome) -> None:
        f = state.config
        path, error, err_no = o.path, o.error, o.errno
        key = (f.name, path)
        attempt = self._attempts.get(key, 0) + 1
        will_retry = not self.once and err_no not in PERMANENT_ERRNOS
        extra: dict[str, Any] = {}
        if will_retry:
            self._attempts[key] = attempt
            delay = min(RETRY_MAX_DELAY, 2.0 ** (attempt - 1))
            extra["retry_in_s"] = delay
            self.changes.touch(f.name, path, settle=f.settle, ready=True, not_before=self.changes.clock() + delay)
        else:
            self._attempts.pop(key, None)
        if error.startswith(NOT_KEPT) or f"{NOT_KEPT} " in error:
            extra["fix"] = versions_fix(f.versions_area or "", err_no, will_retry)
        else:
            extra["fix"] = fix_for(err_no, will_retry)
        fields = dict(folder=f.name, path=path, error=error, errno=error_kind(err_no), will_retry=will_retry,
                      attempt=attempt, **extra)
        if self.repeats.admit((f.name, error), path, error=error, errno=error_kind(err_no), **extra):
            self.log.error("mirror_failed", **fields)
        else:
            # Folded into the next mirror_failed_repeated line; every attempt is still there at debug level.
            self.log.debug("mirror_failed", folded=True, **fields)
            self.wake()  # the window's end is a deadline of the main loop's


def versions_fix(area: str, err_no: int, will_retry: bool) -> str:
    """The fix of a path whose old entry could not be kept: the mirror keeps it and waits."""
    return (f"make room in the versions area {area} (free space or inodes on the target's file system, prune "
            f"versions, or lower versions.max_age) or give the service user (uid {os.geteuid()}) write access to it; "
            "until a version can be kept the old file stays in the mirror and this change waits"
            + ("; it is retried with backoff" if will_retry else "; then run sync again"))
