"""The persistent worker Pool, batching, the results queue and recovery of lost work.

multiprocessing.Pool loses a task for good when its worker dies, and a worker killed
while idle can wedge the whole Pool: it dies holding the task queue's read lock,
and no worker ever receives a task again (CPython gh-66587). So every task stays in an in-flight
registry until each of its items has reported, workers announce themselves on the
results queue, and when one of them dies the Pool (with its results queue) is retired
and a fresh one takes over what was in flight. Copies are idempotent, so a resubmitted
item that had in fact finished is harmless.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import multiprocessing.util
import os
import queue
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import forkserver, resource_tracker
from typing import Any, NamedTuple

from foldermirror.pipeline import worker
from foldermirror.pipeline.changes import Item
from foldermirror.pipeline.records import BatchResults, Hello, Outcome, WorkItem

RETIRED_DRAIN = 0.2  # a retired generation's collector leaves after this long without a message


FORK_SERVER_PRELOAD = ("foldermirror.pipeline.worker", "multiprocessing.pool", "multiprocessing.queues",
                       "foldermirror.pipeline.fork_freeze")


class Result(NamedTuple):
    """What became of one queue item, as one worker message told it."""

    item: Item
    outcomes: list[Outcome]
    duration_ms: float


ResultHandler = Callable[[list[Result], int], None]


@dataclass
class _Task:
    task_id: int
    items: list[Item]
    work: list[WorkItem]           # work[i] is items[i]
    generation: int
    bulk: bool = False
    started: bool = False  # a bulk task's worker said it began (run_batch's `announce`)
    reported: set[int] = field(default_factory=set)


@dataclass
class _Generation:
    number: int
    pool: Any
    results: Any
    pids: set[int] = field(default_factory=set)
    # Workers the Pool has started: more than its size means it replaced one that died,
    # perhaps before that worker's hello reached us (then nothing else would tell).
    spawned: list[int] = field(default_factory=lambda: [0])
    retired: bool = False
    collector: threading.Thread | None = None
    # Written once on retirement: the collector blocks on the results queue and this pipe.
    wake: tuple[int, int] = field(default_factory=lambda: _wake_pipe())

    def retire(self) -> None:
        if self.retired:
            return
        self.retired = True
        _poke(self.wake[1])
        os.close(self.wake[1])


class WorkerPool:
    """A persistent multiprocessing.Pool that never loses a submitted item."""

    def __init__(self, size: int, *, on_results: ResultHandler, on_worker_lost: Callable[[list[int], int], None],
                 instance: str, wake: Callable[[], None] = lambda: None,
                 on_error: Callable[[str, BaseException], None] = lambda where, exc: None) -> None:
        """`wake` is called (from a thread of the pool's) when a worker exits: then call supervise().
        `on_error(where, exc)` hears of a bug the pool survived (its work is not lost)."""
        self.size = size
        self._on_results = on_results
        self._on_error = on_error
        self._on_worker_lost = on_worker_lost
        self._wake = wake
        self._instance = instance
        self._ctx = multiprocessing.get_context("forkserver")
        # Workers are forked from the fork server with their code and the Pool's own modules
        # already imported: pages shared with the fork server, not imported again per worker.
        # FORK_SERVER_PRELOAD ends with fork_freeze, which keeps those pages shared.
        self._ctx.set_forkserver_preload(list(FORK_SERVER_PRELOAD))
        self._lock = threading.Condition()
        self._tasks: dict[int, _Task] = {}
        self._next_task = 0
        # A few batches queued behind each running one: workers stay fed while the main
        # process is busy (a catch-up walk, logging a burst of results).
        self._max_tasks = size * 4
        # Bulk batches (big, see Pipeline) wait while this many of them are queued and not yet
        # started: the next worker to be free finds one, and a live batch sent meanwhile queues
        # behind at most this many (the pool's task queue is first come, first served), shared
        # by all the workers: about half a bulk batch each.
        self._max_bulk_queued = max(1, size // 2)
        self._stopping = False
        self.restarts = 0
        # Before the first generation: its collector pokes it on the workers' first hello.
        self._monitor_wake = _wake_pipe()  # the set of workers to watch changed
        self._gen = self._start_generation(1)
        self._monitor_thread = threading.Thread(target=self._monitor, name="worker-monitor", daemon=True)
        self._monitor_thread.start()

    # -- generations -----------------------------------------------------------
    def _start_generation(self, number: int) -> _Generation:
        results = self._ctx.Queue()
        spawned = [0]

        def on_spawn() -> None:  # on the Pool's worker handler thread once it runs
            spawned[0] += 1
            if spawned[0] > self.size:
                self._wake()  # the main loop's supervise() replaces this generation

        pool = _pool_class(on_spawn)(self.size, initializer=worker.init_worker,
                                     initargs=(results, self._instance, os.getpid()), context=self._ctx)
        gen = _Generation(number=number, pool=pool, results=results, spawned=spawned)
        gen.collector = threading.Thread(target=self._collect, args=(gen,), name=f"results-{number}", daemon=True)
        gen.collector.start()
        return gen

    def _collect(self, gen: _Generation) -> None:
        # One selector for the generation's life: multiprocessing.connection.wait() builds
        # a new one per call, which cost more than handling the message it waited for.
        ready = selectors.DefaultSelector()
        ready.register(gen.results._reader, selectors.EVENT_READ)
        ready.register(gen.wake[0], selectors.EVENT_READ)
        try:
            while True:
                try:
                    msg = self._next_message(gen, ready)
                except queue.Empty:
                    return
                except (EOFError, OSError, ValueError):
                    return
                if msg is None:
                    continue
                try:
                    self._handle(gen, msg)
                except Exception as exc:  # noqa: BLE001 - the collector must outlive a bad message
                    self._report_error("result collector", exc)
        finally:
            ready.close()
            os.close(gen.wake[0])

    def _next_message(self, gen: _Generation, ready: selectors.BaseSelector) -> Hello | BatchResults | None:
        """The next message; None when woken by retirement. Raises queue.Empty once a
        retired generation has been quiet for RETIRED_DRAIN (its late results were taken)."""
        if gen.retired:
            msg: Hello | BatchResults = gen.results.get(timeout=RETIRED_DRAIN)
            return msg
        # Blocks without a timeout: an idle daemon must not wake up to poll.
        if all(key.fileobj is not gen.results._reader for key, _ in ready.select()):
            return None
        msg = gen.results.get()
        return msg

    def _handle(self, gen: _Generation, msg: Hello | BatchResults) -> None:
        if isinstance(msg, Hello):
            with self._lock:
                gen.pids.add(msg.pid)
            _poke(self._monitor_wake[1])
            return
        fresh: list[Result] = []
        with self._lock:
            task = self._tasks.get(msg.task_id)
            if task is None:
                return
            if task.bulk and not task.started:
                task.started = True
                self._lock.notify_all()
            for r in msg.results:
                if r.position not in task.reported:  # else a duplicate from a retired generation
                    task.reported.add(r.position)
                    fresh.append(Result(task.items[r.position], r.outcomes, r.duration_ns / 1e6))
        try:
            # Logged before the task leaves the registry, so stop() never outruns a result.
            if fresh:
                self._on_results(fresh, msg.pid)
        finally:  # a handler that raised must not leave the task holding a slot for good
            with self._lock:
                if len(task.reported) == len(task.items) and self._tasks.get(msg.task_id) is task:
                    del self._tasks[msg.task_id]
                    self._lock.notify_all()

    # -- submission ------------------------------------------------------------
    def submit(self, items: list[Item], work: list[WorkItem], bulk: bool = False) -> None:
        """Hand a batch to the workers (work[i] is items[i], with position i); blocks while
        enough work is already in flight, a `bulk` one also while enough bulk batches wait
        for a worker."""
        with self._lock:
            while (len(self._tasks) >= self._max_tasks
                   or (bulk and self.bulk_waiting() >= self._max_bulk_queued)) and not self._stopping:
                self._lock.wait(0.5)
            task = _Task(self._next_task, items, work, self._gen.number, bulk=bulk)
            self._next_task += 1
            self._tasks[task.task_id] = task
            self._send(task, work)

    def bulk_waiting(self) -> int:
        """Bulk batches sent that no worker has said it started (a few at most: one pass)."""
        with self._lock:  # an RLock: submit() asks while holding it
            return sum(1 for t in self._tasks.values() if t.bulk and not t.started)

    def _send(self, task: _Task, work: list[WorkItem]) -> None:
        task.generation = self._gen.number
        self._gen.pool.apply_async(worker.run_batch, (self._gen.number, task.task_id, work, task.bulk),
                                   error_callback=lambda exc, t=task: self._failed_task(t, exc))

    def _unreported(self, task: _Task) -> list[WorkItem]:
        return [w for w in task.work if w.position not in task.reported]

    def _report_error(self, where: str, exc: BaseException) -> None:
        try:
            self._on_error(where, exc)
        except Exception:  # noqa: BLE001 - reporting a bug must not raise another
            pass

    def _failed_task(self, task: _Task, exc: BaseException) -> None:
        # run_batch catches per item; this is a pickling or pool-level error: resend.
        self._report_error("worker batch", exc)
        with self._lock:
            if task.task_id in self._tasks and not self._stopping:
                self._send(task, self._unreported(task))

    # -- health ----------------------------------------------------------------
    def supervise(self) -> None:
        """Called from the main loop: replace the Pool if any of its workers died."""
        with self._lock:
            gen = self._gen
            dead = [pid for pid in gen.pids if not process_alive(pid)]
            if not dead and len(gen.pids) <= self.size and gen.spawned[0] <= self.size:
                return
            self.restarts += 1
            gen.retire()
            self._gen = self._start_generation(gen.number + 1)
            _poke(self._monitor_wake[1])
            lost = list(self._tasks.values())
            for task in lost:
                self._send(task, self._unreported(task))
            resubmitted = sum(len(t.items) - len(t.reported) for t in lost)
        _retire(gen)
        self._on_worker_lost(dead, resubmitted)

    def _monitor(self) -> None:
        """Thread body: call `wake` when a worker exits or more workers said hello than the
        Pool holds (it replaced one on its own); supervise() then replaces the Pool.

        Waits on a pidfd per worker, so an idle daemon does not poll /proc. Where pidfds
        are missing (Linux < 5.3) it looks once a second.
        """
        fds: dict[int, int] = {}    # pid → pidfd
        gone: set[int] = set()      # exits already reported
        poll = not hasattr(os, "pidfd_open")
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    pids = set(self._gen.pids)
                    crowded = len(pids) > self.size
                gone &= pids
                for pid in [p for p in fds if p not in pids]:
                    os.close(fds.pop(pid))
                for pid in pids - fds.keys() - gone:
                    if poll:
                        if not process_alive(pid):
                            gone.add(pid)
                        continue
                    try:
                        fds[pid] = os.pidfd_open(pid)
                    except ProcessLookupError:
                        gone.add(pid)
                    except OSError:  # ENOSYS: a kernel without pidfds
                        poll = True
                if gone or crowded:
                    self._wake()
                ready, _, _ = select.select([self._monitor_wake[0], *fds.values()], [], [], 1.0 if poll else None)
                if self._monitor_wake[0] in ready:
                    os.read(self._monitor_wake[0], 4096)
                for pid, fd in list(fds.items()):
                    if fd in ready:
                        os.close(fds.pop(pid))
                        gone.add(pid)
        finally:
            for fd in fds.values():
                os.close(fd)

    def healthy(self) -> bool:
        with self._lock:
            return not self._gen.retired and all(process_alive(pid) for pid in self._gen.pids)

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(t.items) - len(t.reported) for t in self._tasks.values())

    # -- shutdown --------------------------------------------------------------
    def stop(self, grace: float) -> int:
        """Let in-flight work finish for up to `grace` seconds, then stop the workers.

        Returns how many items were abandoned (the next start's catch-up redoes them).
        """
        deadline = time.monotonic() + grace
        with self._lock:
            self._stopping = True
            while self._tasks and time.monotonic() < deadline:
                self._lock.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            abandoned = sum(len(t.items) - len(t.reported) for t in self._tasks.values())
            gen = self._gen
            gen.retire()
        _poke(self._monitor_wake[1])
        if abandoned == 0:
            gen.pool.close()
            _join_with_timeout(gen.pool, 5.0)
        _retire(gen)
        _stop_helpers(5.0)
        return abandoned


def _pool_class(on_spawn: Callable[[], None]) -> type[multiprocessing.pool.Pool]:
    """multiprocessing.pool.Pool that calls `on_spawn` for every worker it starts, its own
    replacements of dead workers included (which it otherwise makes without a word)."""

    class CountingPool(multiprocessing.pool.Pool):
        @staticmethod
        def Process(ctx: Any, *args: Any, **kwds: Any) -> Any:  # noqa: N802 - the base class's name
            on_spawn()
            return ctx.Process(*args, **kwds)

        def _get_sentinels(self) -> list[Any]:
            # What wakes the Pool's worker handler thread besides a worker exiting. The base
            # class adds the Pool's own result pipe, which its result handler thread reads:
            # from a task's end until that thread has read its return value the pipe stays
            # readable, and the worker handler loops (a poll of every worker and a new
            # selector each time), holding the interpreter's lock the main process needs.
            # The change notifier (the cache emptied, the pool terminated) and the workers'
            # own sentinels are all it needs to replace a dead worker and to stop.
            return [self._change_notifier._reader]  # type: ignore[attr-defined]

    return CountingPool


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    # The state follows the command name in parentheses, which may itself hold ") ".
    return data[data.rindex(b")") + 2:data.rindex(b")") + 3] not in (b"Z", b"X")


def _retire(gen: _Generation) -> None:
    """Stop an old generation without ever blocking the caller.

    Pool.terminate() can hang on a lock that a killed worker held, so it runs in a daemon
    thread; workers get SIGTERM (their copy unwinds and removes its temp file) and, if
    still there after a moment, SIGKILL. The Pool replaces a dead worker on its own, and
    such a replacement never says hello on the retired results queue: the Pool's own list
    of processes names it.
    """
    threading.Thread(target=_terminate, args=(gen.pool,), name=f"retire-{gen.number}", daemon=True).start()
    pids: set[int] = set()
    deadline = time.monotonic() + 3.0
    while True:
        fresh = (set(gen.pids) | _pool_pids(gen.pool)) - pids
        for pid in fresh:
            _signal(pid, signal.SIGTERM)
        pids |= fresh
        if time.monotonic() >= deadline or not any(process_alive(p) for p in pids):
            break
        time.sleep(0.02)
    for pid in pids | _pool_pids(gen.pool):
        if process_alive(pid):
            _signal(pid, signal.SIGKILL)


def _terminate(pool: multiprocessing.pool.Pool) -> None:
    """Pool.terminate() of a pool being thrown away, quietly.

    Its first step reads what is left in the task pipe. A worker stopped (SIGTERM) while it
    was reading a task leaves the rest of that message there, which then reads as garbage
    (EOFError, an unpickling error), and terminate() raises before it tells the Pool's
    result thread to end. Nothing is lost (the generation's work is already abandoned or
    resubmitted, and _retire signals the workers itself): the result thread is told here.
    """
    try:
        pool.terminate()
    except Exception:  # noqa: BLE001 - see docstring
        # What terminate() would have done next: the thread's state, then its sentinel.
        handler, outqueue = getattr(pool, "_result_handler", None), getattr(pool, "_outqueue", None)
        if handler is not None and outqueue is not None:
            handler._state = multiprocessing.pool.TERMINATE
            outqueue.put(None)


def _stop_helpers(timeout: float) -> None:
    """Stop and reap the fork server and the resource tracker before the main process exits.

    Left alone they exit only once the main process is gone (EOF on their pipes), and under
    systemd's KillMode=mixed that is too late: whatever is still in the unit's cgroup when the
    main process exits is SIGKILLed. First multiprocessing's own exit hook runs (as it would at
    interpreter exit): it unlinks the named semaphores of the pools and queues and unregisters
    them, so the tracker, stopped next, has nothing left to clean up or warn about. These
    functions are private (CPython's tests use them) and may block, hence the getattr and the
    threads with a timeout.
    """
    steps = [getattr(multiprocessing.util, "_exit_function", None),
             getattr(getattr(forkserver, "_forkserver", None), "_stop", None),
             getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)]
    for step in steps:
        if callable(step):
            t = threading.Thread(target=_quietly, args=(step,), name="stop-helper", daemon=True)
            t.start()
            t.join(timeout)


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - at shutdown a helper that is already gone is fine
        pass


def _pool_pids(pool: Any) -> set[int]:
    try:
        return {p.pid for p in list(getattr(pool, "_pool", ())) if p.pid}
    except Exception:  # noqa: BLE001 - a private attribute: best effort
        return set()


def _join_with_timeout(pool: Any, timeout: float) -> None:
    t = threading.Thread(target=pool.join, daemon=True)
    t.start()
    t.join(timeout)


def _wake_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(w, False)
    return r, w


def _poke(fd: int) -> None:
    """Wake whoever waits on the read end of a wake pipe."""
    try:
        os.write(fd, b"\0")
    except OSError:  # full (already woken) or closed (nobody waits any more)
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
