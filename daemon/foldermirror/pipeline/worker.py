"""What runs in the pool's workers: set-up, and one batch of WorkItems at a time.

Standard library only: a worker imports this module, the copier, the records and the
targets, and nothing else of ours (bar the stdlib-only, test-only `faults`).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time
from typing import Any

from foldermirror import faults
from foldermirror.pipeline.copier import Mirror, SourceTree
from foldermirror.pipeline.fidelity import keep_for
from foldermirror.pipeline.records import BatchResults, FolderSpec, Hello, ItemResult, Outcome, Status, WorkItem
from foldermirror.pipeline.targets import ROOT_FLAGS, LocalTarget

RESULTS_FLUSH_ITEMS = 32
RESULTS_FLUSH_NS = 5_000_000

_results: Any = None
_instance = "0"


def _on_term(signum: int, frame: Any) -> None:
    # A stopping pool sends two (Pool.terminate() and the daemon's own, see pool._retire):
    # the second must not interrupt the clean-up the first one starts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)  # unwinds the copy so its temp file is removed


def init_worker(results: Any, instance: str, daemon_pid: int = 0) -> None:
    """Pool initializer. It must never raise: a failing initializer respawns forever."""
    global _results, _instance
    try:
        _results = results
        _instance = instance
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
        signal.signal(signal.SIGTERM, _on_term)
        _die_with_parent(daemon_pid)
        if not (faults.ENABLED and faults.value("no_hello") is not None):
            results.put(Hello(os.getpid()))
    except BaseException:  # noqa: BLE001 - see docstring
        pass


def _die_with_parent(daemon_pid: int) -> None:
    """SIGTERM this worker (its copy unwinds, its temp file goes) when the daemon is gone.

    Without it a worker orphaned by a SIGKILLed daemon finishes its copy and publishes it
    while a restarted daemon is already mirroring the same path. PR_SET_PDEATHSIG does not
    help: a worker's parent is the fork server, which every worker keeps alive.
    """
    if daemon_pid:
        threading.Thread(target=_watch_daemon, args=(daemon_pid,), name="watch-daemon", daemon=True).start()


def _watch_daemon(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while pid_alive(pid):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])
    os.kill(os.getpid(), signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def run_batch(generation: int, task_id: int, items: list[WorkItem], announce: bool = False) -> None:
    """Mirror each item and report BatchResults messages of ItemResults.

    Results go out in groups (every RESULTS_FLUSH_ITEMS items or 5 ms, and at the end):
    one queue message per small file would cost more than its copy. A worker that dies
    takes its unsent results with it; those items are resubmitted and find nothing to do.
    With `announce`, an empty message says first that the batch has started.
    """
    pid = os.getpid()
    if announce:
        _results.put(BatchResults(generation, task_id, [], pid))
    remote = [item for item in items if item.folder.remote is not None]
    if remote:
        _results.put(BatchResults(generation, task_id, _remote_batches(remote), pid))
        items = [item for item in items if item.folder.remote is None]
    folders = _Folders()
    pending: list[ItemResult] = []
    last_flush = time.monotonic_ns()
    try:
        for item in items:
            started = time.monotonic_ns()
            try:
                outcomes = folders.mirror(item)
            except Exception as exc:  # noqa: BLE001 - a bug must cost one file, not the batch
                outcomes = [Outcome(item.path, Status.FAILED, error=f"internal error: {exc!r}")]
            now = time.monotonic_ns()
            pending.append(ItemResult(item.position, outcomes, now - started))
            if len(pending) >= RESULTS_FLUSH_ITEMS or now - last_flush >= RESULTS_FLUSH_NS:
                _results.put(BatchResults(generation, task_id, pending, pid))
                pending, last_flush = [], now
    finally:
        folders.close()
    if pending:
        _results.put(BatchResults(generation, task_id, pending, pid))


def _remote_batches(items: list[WorkItem]) -> list[ItemResult]:
    """A remote folder's items go as one batch each (see remote/batch.py)."""
    from foldermirror.remote.batch import mirror_batch  # the local-only worker never loads it

    by_folder: dict[FolderSpec, list[WorkItem]] = {}
    for item in items:
        by_folder.setdefault(item.folder, []).append(item)
    results: list[ItemResult] = []
    for spec, group in by_folder.items():
        try:
            results += mirror_batch(spec, group)
        except Exception as exc:  # noqa: BLE001 - a bug must cost this batch, not the worker
            results += [ItemResult(i.position, [Outcome(i.path, Status.FAILED, error=f"internal error: {exc!r}")], 0)
                        for i in group]
    return results


class _Folders:
    """The folders of one batch, each opened once, their directory fds cached for the batch
    (most files of a burst share a few parents)."""

    def __init__(self) -> None:
        self._open: dict[FolderSpec, Mirror | list[Outcome]] = {}

    def mirror(self, item: WorkItem) -> list[Outcome]:
        m = self._open.get(item.folder)
        if m is None:
            m = self._open[item.folder] = open_folder(item.folder, item.path)
        if isinstance(m, list):  # the roots could not be opened: the same answer for every path
            return [o._replace(path=item.path) for o in m]
        outcomes = m.mirror(item.path, item.origin, item.busy, item.link_to)
        kept = m.target.kept_versions()
        if kept:  # each path's outcome names the version its old entry left
            outcomes = [o._replace(version_kept=kept[o.path]) if o.path in kept else o for o in outcomes]
        return outcomes

    def close(self) -> None:
        for m in self._open.values():
            if isinstance(m, Mirror):
                m.source.close()
                m.target.close()
        self._open.clear()


def open_folder(spec: FolderSpec, path: str) -> Mirror | list[Outcome]:
    """A Mirror of the folder, or the outcome for a path when its roots cannot be used.

    When the source root is gone, unreadable, or no longer the directory the service
    watches (`root_id`: an unmounted source shows the empty folder beneath), nothing is
    touched and the outcome is ROOT_CHANGED: the service re-checks the root and compares
    the whole folder once it is back, under the mass-delete guard.
    """
    source = spec.source
    try:
        sroot = os.open(source, ROOT_FLAGS)
    except OSError as exc:
        status = (Status.ROOT_CHANGED if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ESTALE,
                                                       errno.EIO) else Status.FAILED)
        return [Outcome(path, status, error=f"source folder {source}: {exc.strerror}", errno=exc.errno or 0)]
    if spec.root_id is not None:
        st = os.fstat(sroot)
        if (st.st_dev, st.st_ino) != tuple(spec.root_id):
            os.close(sroot)
            return [Outcome(path, Status.ROOT_CHANGED, error=f"source folder {source} is not the one being watched")]
    try:
        keep = keep_for(spec.preserve)
        target = LocalTarget(spec.target, delete=spec.delete, durable=spec.durable, instance=_instance, keep=keep,
                             versions=spec.versions)
    except OSError as exc:
        os.close(sroot)
        return [Outcome(path, Status.FAILED, error=f"target folder {spec.target}: {exc.strerror}",
                        errno=exc.errno or 0)]
    return Mirror(SourceTree(sroot), target, delete=spec.delete, keep=target.keep, hardlinks=spec.hardlinks)
