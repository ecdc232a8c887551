"""The path of a change, owned in one place: ChangeQueue → dispatcher → WorkerPool → ResultRecorder.

`Pipeline` makes the ChangeQueue and the ResultRecorder at once (the catch-ups and the
watcher feed the queue before anything runs) and the WorkerPool with its dispatcher thread
on start(): the Pool and its fork server must exist before any watcher thread does, since
a fork of a multi-threaded process inherits its locks in whatever state they were.

It also owns the rule that drops work seen before its folder was removed or reloaded, or
before its source root changed (the folder's epoch, see ChangeQueue.forget): items are
judged here, before the pool's lock is taken, and only live ones become WorkItems.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from foldermirror.catchup.compare import Request
from foldermirror.config import FolderConfig
from foldermirror.folderstate import FolderState
from foldermirror.logs import Repeats
from foldermirror.pipeline.changes import ChangeQueue, Item
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.inodes import InodeNames
from foldermirror.pipeline.pool import Result, WorkerPool
from foldermirror.pipeline.records import FolderSpec, Outcome, RemoteSpec, Status, WorkItem
from foldermirror.pipeline.results import Observe, OnKept, ResultRecorder

BATCH_MAX = 64
# A catch-up's batches (bulk work only, see ChangeQueue's lanes) are bigger: a task costs the
# pool and the workers about as much at 128 items as at 64, and no one waits on a bulk path.
# Bigger still would cost a save during a catch-up more than it saves: it waits for a worker
# to finish one (see WorkerPool.submit), 100 ms at 256 items on a busy 2-core machine.
BULK_BATCH_MAX = 128
# A remote folder's batch is one rsync call, a round trip or more whatever its size: fill it
# (one batch of a remote folder is in flight at a time, see ChangeQueue.serial).
REMOTE_BATCH_MAX = 5000


class Pipeline:
    def __init__(self, *, log: Any, folders: Mapping[str, FolderState], folder_stats: Callable[[str], FolderStats],
                 repeats: Repeats, wake: Callable[[], None], once: bool = False) -> None:
        self.log = log
        self.folders = folders
        self.changes = ChangeQueue()
        self.inodes = InodeNames()  # hard links: fed by the walks and the outcomes, read by the recorder
        self.recorder = ResultRecorder(log=log, changes=self.changes, folders=folders, folder_stats=folder_stats,
                                       repeats=repeats, wake=wake, once=once, inodes=self.inodes)
        self.pool: WorkerPool | None = None
        self._running = False
        self._dispatcher: threading.Thread | None = None
        self._wake = wake
        self._request_catch_up: Callable[[str, str], None] = lambda name, reason: None
        self._remote_spec: Callable[[FolderConfig], RemoteSpec | None] = lambda f: None

    def connect(self, *, request_walk: Callable[[Request], None], request_catch_up: Callable[[str, str], None],
                root_suspect: Callable[[], None], link_suspect: Callable[[str, str], None],
                remote_spec: Callable[[FolderConfig], RemoteSpec | None], observe: Observe,
                on_kept: OnKept = lambda folder, kept: None,
                walking: Callable[[], bool] = lambda: False) -> None:
        """The parts made after this one that outcomes lead to: the comparison of a moved
        directory or of every folder (a worker died), the root checks, the operator's view."""
        self.recorder.request_walk = request_walk
        self.recorder.walking = walking
        self.recorder.root_suspect = root_suspect
        self.recorder.link_suspect = link_suspect
        self._remote_spec = remote_spec
        self.recorder.observe = observe
        self.recorder.on_kept = on_kept
        self._request_catch_up = request_catch_up

    def start(self, *, workers: int, instance: str) -> None:
        self.pool = WorkerPool(workers, on_results=self.recorder.on_results, on_worker_lost=self._on_worker_lost,
                               instance=instance, wake=self._wake, on_error=self._on_error)
        self._running = True
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._dispatcher.start()

    def _dispatch(self) -> None:
        """Thread body: move ready batches from the ChangeQueue to the Pool."""
        assert self.pool is not None
        while self._running:
            items = self.changes.take(BATCH_MAX, timeout=None, spread=self.pool.size,  # close() wakes it
                                      bulk_max=BULK_BATCH_MAX)
            for name in {i.folder for i in items}:
                state = self.folders.get(name)
                if state is not None and state.config.remote is not None:
                    have = sum(1 for i in items if i.folder == name)
                    items += self.changes.take_more(name, REMOTE_BATCH_MAX - have)
            if items:
                self.submit(items)

    def submit(self, items: list[Item]) -> None:
        """Send live items to the workers; record the rest as dropped (their folder changed)."""
        assert self.pool is not None
        specs: dict[str, tuple[FolderSpec, int] | None] = {}
        live: list[Item] = []
        work: list[WorkItem] = []
        dropped: list[Result] = []
        for item in items:
            if item.folder not in specs:
                specs[item.folder] = self._spec(item.folder)
            spec = specs[item.folder]
            if spec is None:  # the folder was removed by a reload
                dropped.append(Result(item, [], 0.0))
            elif item.epoch != spec[1]:  # seen before the folder's root or config changed
                dropped.append(Result(item, [Outcome(item.path, Status.STALE)], 0.0))
            else:
                work.append(WorkItem(len(live), spec[0], item.path, item.origin, item.busy, item.link_to))
                live.append(item)
        if dropped:
            self.recorder.on_results(dropped, 0)
        if live:
            self.pool.submit(live, work, bulk=all(item.bulk for item in live))

    def _spec(self, name: str) -> tuple[FolderSpec, int] | None:
        state = self.folders.get(name)
        if state is None:
            return None
        f = state.config
        return (FolderSpec(source=str(f.source), target=str(f.target), delete=f.delete, durable=f.durable,
                           root_id=state.root_id, remote=self._remote_spec(f), versions=f.versions_area,
                           preserve=f.preserve, hardlinks="hardlinks" in f.preserve),
                self.changes.epoch(name))

    def _on_error(self, where: str, exc: BaseException) -> None:
        self.log.error("internal_error", where=where, error=repr(exc))

    def _on_worker_lost(self, pids: list[int], resubmitted: int) -> None:
        self.log.error("worker_lost", pids=pids, resubmitted=resubmitted,
                       error="a worker process died; the pool was replaced and its work resubmitted")
        for name in list(self.folders):  # the dead worker's temp file, if any, goes with this walk
            self._request_catch_up(name, "worker_lost")

    def forget(self, folder: str) -> None:
        """Drop a folder's pending work; what is in flight for it is now stale."""
        self.changes.forget(folder)
        self.inodes.forget(folder)

    def supervise(self) -> None:
        if self.pool is not None:
            self.pool.supervise()

    def healthy(self) -> bool:
        return self.pool is not None and self.pool.healthy()

    @property
    def restarts(self) -> int:
        return self.pool.restarts if self.pool is not None else 0

    def stop(self, grace: float) -> int:
        """Stop taking work, let what is in flight finish for up to `grace` seconds; returns
        how many items were abandoned (the next start's catch-up redoes them)."""
        self._running = False
        self.changes.close()
        return self.pool.stop(grace) if self.pool is not None else 0
