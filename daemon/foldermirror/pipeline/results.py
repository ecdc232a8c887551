"""Worker outcomes → log lines, counters and retries (run on the pool's result collector thread).

`ResultRecorder.on_results` is the pool's results callback: one `file_mirrored`,
`file_deleted`, `mirror_failed`… line per outcome, the service's counters and the running
catch-ups updated, failed paths queued again with a backoff (unless permanent or `sync`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from foldermirror.pipeline import copier
from foldermirror.pipeline.changes import ChangeQueue, Item
from foldermirror.errors import PERMANENT_ERRNOS, error_kind, fix_for
from foldermirror.folderstate import FolderState
from foldermirror.logs import Repeats, batch
from foldermirror.pipeline.pool import Result
from foldermirror.catchup.compare import Request

RETRY_MAX_DELAY = 300.0

# What the operator's view is told of each outcome: folder, path, status, kind, bytes, error, errno, latency_ms.
Observe = Callable[[str, str, str, str, int, str, int, float], None]


@dataclass
class Counters:
    mirrored: int = 0
    bytes: int = 0
    deleted: int = 0
    failed: int = 0
    overflows: int = 0


class ResultRecorder:
    """Turns the results the pool collects into log lines, counters and retries."""

    def __init__(self, log: Any, changes: ChangeQueue, folders: Mapping[str, FolderState], repeats: Repeats,
                 request_walk: Callable[[Request], None], observe: Observe, root_suspect: Callable[[], None],
                 wake: Callable[[], None], once: bool = False) -> None:
        self.log = log
        self.changes = changes
        self.folders = folders
        self.repeats = repeats
        self.request_walk = request_walk  # a directory's contents to compare (the Reconciler's request)
        self.observe = observe
        self.root_suspect = root_suspect  # a worker found a source root gone or replaced: look at the roots
        self.wake = wake
        self.once = once                  # `sync`: no retries, a changed root is a failure
        self.counters = Counters()
        self._attempts: dict[tuple[str, str], int] = {}
        self._busy: set[tuple[str, str]] = set()  # paths a file_busy line was written for, until mirrored

    def on_results(self, results: list[Result], pid: int) -> None:
        # The paths leave flight only once their lines are written: whoever sees the folder
        # settled (sync_finished, status) also sees every line of what settled it.
        try:
            with batch():
                for item, outcomes, duration_ms in results:
                    try:
                        self._record(item, outcomes, duration_ms, pid)
                    except Exception as exc:  # noqa: BLE001 - one bad result must not strand the others
                        self.log.error("internal_error", folder=item.folder, path=item.path, error=repr(exc))
        finally:
            self.changes.done_all([item for item, _, _ in results])

    def _record(self, item: Item, outcomes: list[copier.Outcome], duration_ms: float, pid: int) -> None:
        state = self.folders.get(item.folder)
        if state is None:
            return
        f = state.config
        latency_ms = round((time.monotonic() - item.first_seen) * 1000, 3)
        if item.walk:  # a directory moved here: its contents, however the move was replayed
            self.request_walk(Request(f.name, item.path, "subtree", ready=True))
        for path, status, kind, nbytes, error, err_no in outcomes:
            self.observe(f.name, path, status, kind, nbytes, error, err_no, latency_ms)
            key = (item.folder, path)
            c = state.catch_up
            if status in ("copied", "renamed"):
                self._attempts.pop(key, None)
                self._busy.discard(key)
                if kind != "dir":
                    # Files and symlinks, as FolderStats counts: two workers racing to make one
                    # directory may both report it, so counting those would not match the tree.
                    self.counters.mirrored += 1
                    self.counters.bytes += nbytes
                    if c is not None:
                        c.files += 1
                        c.bytes += nbytes
                extra: dict[str, Any] = {"renamed_from": error} if status == "renamed" else {}
                if item.busy and kind == "file":
                    extra["busy"] = True  # published while still being written (see max_delay)
                self.log.info("file_mirrored", folder=f.name, path=path, kind=kind, bytes=nbytes,
                              duration_ms=round(duration_ms, 3), latency_ms=latency_ms, worker_pid=pid, **extra)
                if status == "renamed" and kind == "dir" and not item.walk:
                    self.request_walk(Request(f.name, path, "subtree", ready=True))
            elif status == "deleted":
                self._attempts.pop(key, None)
                self.counters.deleted += 1
                self.log.info("file_deleted", folder=f.name, path=path, kind=kind, latency_ms=latency_ms)
            elif status == "changed":
                self.log.debug("file_changed_during_copy", folder=f.name, path=path)
                if item.busy and key not in self._busy:
                    self._busy.add(key)
                    self.log.warning(
                        "file_busy", folder=f.name, path=path, max_delay_s=f.max_delay,
                        error="the file keeps changing during its copy and is not only appended to; the "
                              "mirror keeps its last complete copy and tries again every max_delay",
                        fix="nothing to do if the file is rewritten in place on purpose (it is mirrored once "
                            "quiet); exclude it if a mirror of it is not wanted")
                self.changes.touch(f.name, path, settle=f.settle, max_delay=f.max_delay)
            elif status == "skipped":
                reserved = copier.is_reserved(path.rsplit("/", 1)[-1])
                extra = {"fix": f"rename it in the source: {copier.LOCK_NAME} is never mirrored"} if reserved else {}
                self.log.warning("file_skipped", folder=f.name, path=path, kind=kind, error=error, **extra)
            elif status == "failed":
                self._failed(state, path, error, err_no)
            elif status == "root_changed":
                self._root_changed(state, path, error, err_no)
            elif status == "stale":  # the comparison after the change that made it stale covers it
                self.log.debug("file_set_aside", folder=f.name, path=path, error="seen before the folder changed")
            else:
                self._attempts.pop(key, None)
                self.log.debug("file_checked", folder=f.name, path=path, status=status)

    def _failed(self, state: FolderState, path: str, error: str, err_no: int) -> None:
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
        extra["fix"] = fix_for(err_no, will_retry)
        fields = dict(folder=f.name, path=path, error=error, errno=error_kind(err_no), will_retry=will_retry,
                      attempt=attempt, **extra)
        if self.repeats.admit((f.name, error), path, error=error, errno=error_kind(err_no), **extra):
            self.log.error("mirror_failed", **fields)
        else:
            # Folded into the next mirror_failed_repeated line; every attempt is still there at debug level.
            self.log.debug("mirror_failed", folded=True, **fields)
            self.wake()  # the window's end is a deadline of the main loop's

    def _root_changed(self, state: FolderState, path: str, error: str, err_no: int) -> None:
        """Nothing was done for `path`: the source root is gone or another folder stands there."""
        if self.once:
            self._failed(state, path, error, err_no)
            return
        self.log.debug("file_set_aside", folder=state.config.name, path=path, error=error)
        state.suspect = True
        self.root_suspect()

