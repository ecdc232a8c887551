"""Pure parts: change coalescing and readiness, path mapping, exclude matching."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from foldermirror.paths import Excluder, relative
from foldermirror.pipeline.changes import ChangeQueue
from helpers import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def q(clock: Clock) -> ChangeQueue:
    return ChangeQueue(clock=clock)


def paths(items) -> list[str]:
    return sorted(i.path for i in items)


def test_many_events_for_one_path_coalesce_into_one_item(q, clock):
    for _ in range(100):
        q.touch("f", "a", settle=0.25)
        clock.now += 0.01
    assert q.take(10, timeout=0) == []  # still being written
    clock.now += 0.3
    items = q.take(10, timeout=0)
    assert paths(items) == ["a"] and items[0].first_seen == 100.0


def test_close_event_makes_a_path_ready_at_once(q, clock):
    q.touch("f", "a", settle=0.25)
    q.touch("f", "a", settle=0.25, ready=True)
    assert paths(q.take(10, timeout=0)) == ["a"]


def test_path_in_flight_is_not_handed_out_twice_and_dirty_comes_back(q, clock):
    q.touch("f", "a", settle=0.25, ready=True)
    [item] = q.take(10, timeout=0)
    q.touch("f", "a", settle=0.25, ready=True)
    assert q.take(10, timeout=0) == []
    q.done(item)
    clock.now += 0.3  # changed during its flight: a hot path, copied again once quiet
    assert paths(q.take(10, timeout=0)) == ["a"]


def test_retry_backoff_is_respected(q, clock):
    q.touch("f", "a", settle=0.25, ready=True, not_before=clock.now + 5)
    assert q.take(10, timeout=0) == []
    assert q.settled("f")  # only waiting out a backoff
    clock.now += 5
    assert paths(q.take(10, timeout=0)) == ["a"]


def test_spread_shares_a_burst_between_workers(q):
    for i in range(100):
        q.touch("f", f"p{i}", settle=0.25, ready=True)
    assert len(q.take(64, timeout=0, spread=4)) == 25


def test_rename_becomes_one_move_item_and_holds_both_paths(q):
    q.moved("f", "old", "new", settle=0.25)
    [item] = q.take(10, timeout=0)
    assert (item.path, item.origin) == ("new", "old")
    q.touch("f", "old", settle=0.25, ready=True)  # a new file at the old name waits
    assert q.take(10, timeout=0) == []
    q.done(item)
    assert paths(q.take(10, timeout=0)) == ["old"]


def test_rename_chain_moves_the_first_mirror_and_rechecks_the_middle(q):
    q.moved("f", "a", "b", settle=0.25)
    q.moved("f", "b", "c", settle=0.25)
    items = {i.path: i.origin for i in q.take(10, timeout=0)}
    assert items == {"c": "a", "b": None}


def test_rename_while_origin_in_flight_falls_back_to_copy(q, clock):
    q.touch("f", "a", settle=0.25, ready=True)
    [flying] = q.take(10, timeout=0)
    q.moved("f", "a", "b", settle=0.25)
    assert [(i.path, i.origin) for i in q.take(10, timeout=0)] == [("b", None)]
    q.done(flying)
    clock.now += 0.3
    assert paths(q.take(10, timeout=0)) == ["a"]


def test_next_due_tells_an_idle_owner_how_long_it_may_sleep(q, clock):
    woken = []
    q.on_change = lambda: woken.append(1)
    assert q.next_due() is None                        # nothing at all: sleep until woken
    q.touch("f", "a", settle=0.25)
    assert woken and q.next_due() <= clock.now         # settling is work: stay awake
    clock.now += 0.3
    [item] = q.take(10, timeout=None)
    assert q.next_due() <= clock.now                   # in flight
    q.done(item)
    q.touch("f", "a", settle=0.25, ready=True, not_before=clock.now + 5)
    assert q.next_due() == clock.now + 5               # only a backoff: sleep until it ends
    q.moved("f", "a", "b", settle=0.25)
    assert len(woken) == 3


def test_take_without_timeout_returns_on_close():
    q = ChangeQueue()
    got = []
    t = threading.Thread(target=lambda: got.append(q.take(10, timeout=None)))
    t.start()
    q.close()
    t.join(10)
    assert got == [[]]


def test_counts_settled_and_forget(q, clock):
    q.touch("f", "a", settle=0.25)
    q.touch("g", "b", settle=0.25, ready=True)
    assert q.counts() == (2, 0) and q.counts("f") == (1, 0)
    assert not q.settled("f")
    q.forget("f")
    assert q.counts("f") == (0, 0) and q.settled("f")


def test_relative():
    assert relative("/src", "/src") == ""
    assert relative("/src", "/src/a/b") == "a/b"
    assert relative("/src", "/srcx/a") is None
    assert relative("/src", "/other") is None


@pytest.mark.parametrize("patterns, path, excluded", [
    (("*.tmp",), "a.tmp", True),
    (("*.tmp",), "deep/er/a.tmp", True),
    (("*.tmp",), "a.tmpx", False),
    (("cache",), "x/cache/file", True),
    (("build/out",), "build/out", True),
    (("build/out",), "build/out/x", True),
    (("build/out",), "other/build/out", False),
    ((), ".foldermirror-abc-12-0011.tmp", True),
    ((), "plain.txt", False),
])
def test_excluder(patterns, path, excluded):
    assert Excluder(patterns)(path) is excluded


def test_a_hot_path_waits_for_quiet_even_after_a_close(q, clock):
    q.touch("f", "a", settle=0.25, ready=True)
    [item] = q.take(10, timeout=0)          # the first close is copied at once
    q.done(item)
    clock.now += 0.05
    q.touch("f", "a", settle=0.25, ready=True)  # closed again right after: a busy file
    assert q.take(10, timeout=0) == []
    clock.now += 0.1
    q.touch("f", "a", settle=0.25, ready=True)
    clock.now += 0.2
    assert q.take(10, timeout=0) == []      # only 0.2 s of quiet so far
    clock.now += 0.06
    assert paths(q.take(10, timeout=0)) == ["a"]


def test_a_path_closed_again_after_quiet_is_ready_at_once(q, clock):
    q.touch("f", "a", settle=0.25, ready=True)
    q.done(q.take(10, timeout=0)[0])
    clock.now += 1.0
    q.touch("f", "a", settle=0.25, ready=True)
    assert paths(q.take(10, timeout=0)) == ["a"]


def test_a_walk_waits_while_the_backlog_is_full_and_goes_on_when_it_drains(clock):
    q = ChangeQueue(clock=clock, backlog_max=4)
    fed: list[int] = []

    def walk() -> None:
        for i in range(10):
            q.wait_for_room()
            q.touch("f", f"p{i}", settle=0.25, ready=True)
            fed.append(i)

    walker = threading.Thread(target=walk, daemon=True)
    walker.start()
    wait_until(lambda: len(fed) == 4 and q.counts() == (4, 0), 10, "the walk did not fill the backlog")
    walker.join(0.2)  # sleep-ok: a full backlog holds the walk back
    assert walker.is_alive() and len(fed) == 4
    handed: list[str] = []
    while len(handed) < 10:
        handed += paths(q.take(1, timeout=5))
    walker.join(10)
    assert not walker.is_alive() and sorted(handed) == sorted(f"p{i}" for i in range(10))


def test_close_releases_a_waiting_walk(clock):
    q = ChangeQueue(clock=clock, backlog_max=1)
    q.touch("f", "a", settle=0.25, ready=True)
    walker = threading.Thread(target=q.wait_for_room, daemon=True)
    walker.start()
    walker.join(0.2)  # sleep-ok: it waits for room
    assert walker.is_alive()
    q.close()
    walker.join(10)
    assert not walker.is_alive()


def test_prune_forgets_paths_no_longer_hot_and_keeps_hot_ones(q, clock):
    for name in ("old", "hot"):
        q.touch("f", name, settle=0.25, ready=True)
        q.done(q.take(10, timeout=0)[0])
        clock.now += 1.0 if name == "old" else 0.1
    q.prune()
    assert set(q._handed_out) == {("f", "hot")}
    q.touch("f", "hot", settle=0.25, ready=True)
    assert q.take(10, timeout=0) == []  # still hot: it waits for quiet


def test_prune_hands_back_the_tables_a_big_backlog_grew(q, clock):
    for i in range(10_000):
        q.touch("f", f"p{i}", settle=0.25, ready=True)
    flying = q.take(10_000, timeout=0)
    grown = sys.getsizeof(q._entries)
    q.done_all(flying[:-1])
    flying_grown = sys.getsizeof(q._in_flight)
    q.prune()
    assert grown > 100 * sys.getsizeof({}) and sys.getsizeof(q._entries) == sys.getsizeof({})
    assert flying_grown > 100 * sys.getsizeof(set()) and sys.getsizeof(q._in_flight) == sys.getsizeof(set())
    q.done(flying[-1])  # the copies are the queue's: what was in flight lands as before
    assert q.counts("f") == (0, 0)


def in_order(items) -> list[str]:
    return [i.path for i in items]


def test_a_save_in_a_quiet_directory_goes_before_a_burst_in_another(q, clock):
    for i in range(500):
        q.touch("f", f"bulk/d{i % 5}/f{i}", settle=0.25, ready=True)
    q.touch("f", "docs/report.odt", settle=0.25, ready=True)
    first = in_order(q.take(8, timeout=0))
    # the first file of each burst directory came when its directory had nothing else ready
    assert first[:6] == [f"bulk/d{i}/f{i}" for i in range(5)] + ["docs/report.odt"]
    rest = in_order(q.take(1000, timeout=0))
    assert rest == [f"bulk/d{i % 5}/f{i}" for i in range(5, 500) if f"bulk/d{i % 5}/f{i}" not in first], \
        "the burst itself keeps its order"


def test_a_directory_with_work_waiting_does_not_jump_the_queue_again(q, clock):
    q.touch("f", "a/1", settle=0.25, ready=True)
    q.touch("f", "b/1", settle=0.25, ready=True)
    q.touch("f", "a/2", settle=0.25, ready=True)  # a/1 is still waiting: a/2 queues behind b's work
    q.touch("f", "b/2", settle=0.25, ready=True)
    assert in_order(q.take(10, timeout=0)) == ["a/1", "b/1", "a/2", "b/2"]
    q.touch("f", "a/3", settle=0.25, ready=True)  # nothing of a/ waits now: express again
    q.touch("f", "c/9", settle=0.25, ready=True)
    q.touch("f", "a/4", settle=0.25, ready=True)
    assert in_order(q.take(10, timeout=0)) == ["a/3", "c/9", "a/4"]


def test_live_changes_go_before_what_a_comparison_found_and_promote_it(q, clock):
    for i in range(100):
        q.touch("f", f"old/{i}", settle=0.25, ready=True, bulk=True)
    q.touch("f", "new/1", settle=0.25, ready=True)
    q.touch("f", "new/2", settle=0.25, ready=True)
    q.touch("f", "old/50", settle=0.25, ready=True)  # seen live as well: it leaves the bulk lane
    assert in_order(q.take(4, timeout=0)) == ["new/1", "old/50", "new/2", "old/0"]
    rest = in_order(q.take(1000, timeout=0))
    assert rest == [f"old/{i}" for i in range(1, 100) if i != 50], "handed out once each, in their order"


def test_bulk_work_goes_in_big_batches_and_live_work_in_small_ones(q, clock):
    for i in range(1000):
        q.touch("f", f"old/{i}", settle=0.25, ready=True, bulk=True)
    q.touch("f", "new/1", settle=0.25, ready=True)
    batch = q.take(64, timeout=0, bulk_max=256)
    assert len(batch) == 64 and batch[0].path == "new/1", "live work waits: the small batch, live first"
    assert [i.bulk for i in batch] == [False] + [True] * 63
    batch = q.take(64, timeout=0, bulk_max=256)
    assert len(batch) == 256 and all(i.bulk for i in batch), "only bulk work is ready: a big batch of it"
    assert len(q.take(64, timeout=0, bulk_max=256, spread=2)) == 256, "680 left: shared by two takers"
    assert len(q.take(64, timeout=0)) == 64, "without bulk_max every batch is small"


def test_take_more_fills_a_batch_from_every_lane(q, clock):
    q.touch("r", "bulk/1", settle=0.25, ready=True, bulk=True)
    q.touch("l", "x/1", settle=0.25, ready=True)
    q.touch("r", "live/1", settle=0.25, ready=True)
    q.touch("r", "live/2", settle=0.25, ready=True)
    assert in_order(q.take_more("r", 10)) == ["live/1", "live/2", "bulk/1"]
    assert in_order(q.take(10, timeout=0)) == ["x/1"]
    assert q._dir_ready == {}, "the per-directory counts went back to nothing"


# -- comparison ----------------------------------------------------------------------------
def test_walk_counts_the_files_to_copy_apart_from_other_differences(tmp_path):
    """Catch-up progress counts up to `copies`: files and symlinks, not directories or extras."""
    from foldermirror.catchup.compare import WalkStats, diff_tree

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b").mkdir(parents=True)
    (dst / "a").mkdir(parents=True)
    (src / "top.txt").write_text("new")
    (src / "a" / "same.txt").write_text("same")
    (dst / "a" / "same.txt").write_text("same")
    os.utime(dst / "a" / "same.txt", ns=(0, os.stat(src / "a" / "same.txt").st_mtime_ns))
    (src / "a" / "b" / "deep.txt").write_text("deep")
    (src / "link").symlink_to("top.txt")
    (dst / "extra.txt").write_text("gone from the source")
    stats = WalkStats()
    found = {d.path: d.reason for d in diff_tree(str(src), str(dst), Excluder([]), True, "t", stats=stats)}
    assert found == {"top.txt": "missing", "a/b": "missing", "a/b/deep.txt": "missing", "link": "missing",
                     "extra.txt": "extra"}, found
    assert (stats.differences, stats.copies) == (5, 3), stats


# -- copier ------------------------------------------------------------------------------------
def test_directories_made_for_a_file_are_reported_before_it(tmp_path):
    """A file in new directories: each directory made on the way has its own outcome (and so
    its own file_mirrored line), once; the directories' own events later find them unchanged."""
    from foldermirror.pipeline.copier import Mirror
    from foldermirror.pipeline.records import FolderSpec
    from foldermirror.pipeline.worker import open_folder

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b").mkdir(parents=True)
    os.chmod(src / "a", 0o750)
    (src / "a" / "b" / "c.txt").write_text("deep")
    dst.mkdir()
    m = open_folder(FolderSpec(str(src), str(dst), False, False, None), "a/b/c.txt")
    assert isinstance(m, Mirror), m
    try:
        first = m.mirror("a/b/c.txt", None)
        assert [o[:3] for o in first] == [("a", "copied", "dir"), ("a/b", "copied", "dir"),
                                         ("a/b/c.txt", "copied", "file")], first
        assert os.stat(dst / "a").st_mode & 0o777 == 0o750
        again = [m.mirror(p, None) for p in ("a", "a/b", "a/b/c.txt")]
        assert [[o[:2] for o in outs] for outs in again] == [[("a", "unchanged")], [("a/b", "unchanged")],
                                                             [("a/b/c.txt", "unchanged")]], again
    finally:
        m.source.close()
        m.target.close()


# -- pool ----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_bulk_batches_wait_while_one_is_queued_and_live_ones_do_not(tmp_path, monkeypatch):
    """A live batch goes past a bulk batch that waits for a worker; a second bulk batch waits
    until a worker has said it started the first."""
    from foldermirror.pipeline import pool as pool_module
    from foldermirror.pipeline.changes import Item
    from foldermirror.pipeline.pool import WorkerPool
    from foldermirror.pipeline.records import FolderSpec, WorkItem

    # stop() ends multiprocessing's helpers as at the daemon's exit, once per process: the
    # pool of a later test in this process would leave its semaphores to the tracker.
    monkeypatch.setattr(pool_module, "_stop_helpers", lambda timeout: None)

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.txt").write_text("a")
    gate = threading.Event()
    handled: list[str] = []

    def on_results(results, pid):
        handled.append(results[0].item.path)
        if len(handled) == 1:
            gate.wait(30)  # the collector holds here: no bulk batch is seen starting meanwhile

    pool = WorkerPool(2, on_results=on_results, on_worker_lost=lambda pids, n: None, instance="t")
    spec = FolderSpec(str(src), str(dst), False, False, None)

    def submit(bulk: bool, done: threading.Event | None = None) -> None:
        pool.submit([Item(folder="f", path="a.txt", origin=None, first_seen=0.0, bulk=bulk)],
                    [WorkItem(0, spec, "a.txt")], bulk=bulk)
        if done is not None:
            done.set()

    try:
        submit(False)
        wait_until(lambda: handled, 30, lambda: "the first live batch was never reported")
        submit(True)  # queued: the collector that would see it start is held
        second = threading.Event()
        threading.Thread(target=submit, args=(True, second), daemon=True).start()
        submit(False)
        assert pool.bulk_waiting() == 1, "a live batch is sent past a queued bulk one"
        assert not second.wait(0.5), "a second bulk batch waits while the first is queued"
        gate.set()
        assert second.wait(30), "the second bulk batch goes once the first has started"
        wait_until(lambda: not pool._tasks and len(handled) == 4, 30,
                   lambda: f"tasks still registered: {len(pool._tasks)}, handled {handled}")
        assert pool.bulk_waiting() == 0
    finally:
        gate.set()
        pool.stop(5.0)


@pytest.mark.timeout(60)
def test_the_pools_worker_handler_sleeps_while_a_result_waits_to_be_read(monkeypatch):
    """The Pool's worker handler thread only wakes for a worker exiting, the cache emptying
    or the end: a task's return value waiting for the result handler thread must not keep
    it looping (each loop polls every worker, holding the lock the main process needs)."""
    import multiprocessing
    import multiprocessing.pool

    from foldermirror.pipeline import pool as pool_module

    loops: list[int] = []
    maintain = multiprocessing.pool.Pool._maintain_pool
    pool_class = pool_module._pool_class(lambda: None)
    # The handler thread runs Pool._handle_workers of the base class, whatever the subclass.
    monkeypatch.setattr(multiprocessing.pool.Pool, "_maintain_pool",
                        staticmethod(lambda *a: (loops.append(1), maintain(*a))[1]))
    release, first = threading.Event(), threading.Event()

    def on_result(pid: int) -> None:  # on the Pool's result handler thread: the next result waits
        first.set()
        release.wait(30)

    pool = pool_class(1, context=multiprocessing.get_context("forkserver"))
    try:
        done = [pool.apply_async(os.getpid, callback=on_result) for _ in range(2)]
        assert first.wait(30), "the first task never ended"
        reader = pool._outqueue._reader
        wait_until(lambda: reader.poll(0), 30, lambda: "the second task's result never reached the Pool's pipe")
        before = len(loops)
        first.clear()
        assert not first.wait(0.3)  # a window in which the second result waits unread
        assert reader.poll(0), "the second result was read meanwhile: the window shows nothing"
        assert len(loops) - before <= 1, f"the worker handler looped {len(loops) - before} times in 0.3 s"
        release.set()
        assert all(r.get(30) for r in done)
    finally:
        release.set()
        pool.close()
        pool.join()


@pytest.mark.timeout(60)
def test_a_retired_pool_whose_task_pipe_holds_a_torn_message_ends_its_threads_quietly(monkeypatch):
    """A worker stopped while reading a task leaves the rest of that message in the pipe:
    Pool.terminate() reads it as garbage and raises before its result thread is told to end."""
    import multiprocessing
    import time

    from foldermirror.pipeline import pool as pool_module

    raised: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    pool = pool_module._pool_class(lambda: None)(1, context=multiprocessing.get_context("forkserver"))
    try:
        busy = pool.apply_async(time.sleep, (60,))  # the worker does not read the pipe; the task stays in the cache
        pool._inqueue._writer.send_bytes(b"the rest of a message")  # type: ignore[attr-defined]
        stopper = threading.Thread(target=pool_module._terminate, args=(pool,))
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive()
        pool._result_handler.join(30)  # type: ignore[attr-defined]
        assert not pool._result_handler.is_alive(), "the result thread waits for ever"  # type: ignore[attr-defined]
        assert raised == []
        assert not busy.ready()
    finally:
        for worker in pool._pool:  # type: ignore[attr-defined]
            worker.kill()
            worker.join(10)


def test_a_result_handler_that_raises_is_reported_and_frees_its_slot(tmp_path):
    """A bug in the result handler is logged (on_error), and its batch leaves the registry:
    left there, a few such batches would block every later submit."""
    from foldermirror.pipeline.changes import Item
    from foldermirror.pipeline.pool import WorkerPool
    from foldermirror.pipeline.records import FolderSpec, WorkItem

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.txt").write_text("a")
    errors: list[tuple[str, BaseException]] = []
    handled = threading.Event()

    def on_results(results, pid):
        handled.set()
        raise RuntimeError("a bug in the handler")

    pool = WorkerPool(1, on_results=on_results, on_worker_lost=lambda pids, n: None, instance="t",
                      on_error=lambda where, exc: errors.append((where, exc)))
    spec = FolderSpec(str(src), str(dst), False, False, None)
    try:
        for _ in range(pool._max_tasks + 1):  # more than the slots: the last submit blocks if slots leak
            pool.submit([Item(folder="f", path="a.txt", origin=None, first_seen=0.0, walk=False, epoch=0)],
                        [WorkItem(0, spec, "a.txt")])
        wait_until(lambda: pool.in_flight() == 0 and not pool._tasks, 30,
                   lambda: f"tasks still registered: {len(pool._tasks)}")
        assert handled.is_set() and errors and errors[0][0] == "result collector", errors
        assert (dst / "a.txt").read_text() == "a"
    finally:
        pool.stop(5.0)
