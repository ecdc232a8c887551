"""Pipeline.submit (pipeline/pipeline.py): the epoch rule and the WorkItems a batch becomes.

A fake pool takes the place of the WorkerPool (nothing is forked); items come out of the
Pipeline's own ChangeQueue on a fake clock, as the dispatcher would take them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fakes import Calls, Clock, FakeLog, folder, in_flight, state
from foldermirror.config import PRESERVABLE
from foldermirror.folderstate import FolderState
from foldermirror.logs import Repeats
from foldermirror.pipeline.changes import Item
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.pipeline import Pipeline
from foldermirror.pipeline.records import FolderSpec, WorkItem


class FakePool:
    size = 1

    def __init__(self) -> None:
        self.batches: list[tuple[list[Item], list[WorkItem]]] = []
        self.bulk: list[bool] = []

    def submit(self, items: list[Item], work: list[WorkItem], bulk: bool = False) -> None:
        self.batches.append((items, work))
        self.bulk.append(bulk)


class Rig:
    def __init__(self) -> None:
        self.log = FakeLog()
        self.folders: dict[str, FolderState] = {
            "a": state(folder("a", Path("/srv"), delete=True), root_id=(1, 11)),
            "b": state(folder("b", Path("/srv"), durable=True), root_id=(1, 12)),
        }
        self.stats: dict[str, FolderStats] = {}
        self.pipeline = Pipeline(log=self.log, folders=self.folders, folder_stats=self.folder_stats,
                                 repeats=Repeats(), wake=Calls())
        self.changes = self.pipeline.changes
        self.changes.clock = Clock()
        self.pool: Any = FakePool()
        self.pipeline.pool = self.pool

    def folder_stats(self, name: str) -> FolderStats:
        return self.stats.setdefault(name, FolderStats())


def test_live_items_become_work_items_numbered_in_batch_order():
    rig = Rig()
    items = in_flight(rig.changes, "a", "x", "y") + in_flight(rig.changes, "b", "z")
    rig.pipeline.submit(items)
    ((sent, work),) = rig.pool.batches
    assert sent == items
    assert [(w.position, w.path) for w in work] == [(i, item.path) for i, item in enumerate(items)]
    assert rig.log.lines == []
    assert rig.pool.bulk == [False]


def test_a_batch_of_bulk_items_only_goes_to_the_pool_as_bulk():
    rig = Rig()
    bulk = [dataclasses.replace(i, bulk=True) for i in in_flight(rig.changes, "a", "x", "y")]
    rig.pipeline.submit(bulk)
    (live,) = in_flight(rig.changes, "b", "z")
    rig.pipeline.submit([live, *[dataclasses.replace(i, path=i.path + "2") for i in bulk]])
    assert rig.pool.bulk == [True, False], "one live item makes the batch live"


def test_one_folder_spec_is_shared_by_every_item_of_a_folder():
    rig = Rig()
    rig.pipeline.submit(in_flight(rig.changes, "a", "x", "y") + in_flight(rig.changes, "b", "z"))
    ((_, (x, y, z)),) = rig.pool.batches
    assert x.folder is y.folder and z.folder is not x.folder
    assert x.folder == FolderSpec("/srv/a-src", "/srv/a-dst", delete=True, durable=False, root_id=(1, 11),
                                   preserve=PRESERVABLE, hardlinks=True)
    assert z.folder == FolderSpec("/srv/b-src", "/srv/b-dst", delete=False, durable=True, root_id=(1, 12),
                                   preserve=PRESERVABLE, hardlinks=True)


def test_origin_and_busy_are_carried_into_the_work_item():
    rig = Rig()
    rig.changes.moved("a", "old", "new", settle=0.25)
    (moved,) = rig.changes.take(10, timeout=0)
    (busy,) = in_flight(rig.changes, "a", "log")
    rig.pipeline.submit([moved, dataclasses.replace(busy, busy=True)])
    ((_, work),) = rig.pool.batches
    assert [(w.path, w.origin, w.busy) for w in work] == [("new", "old", False), ("log", None, True)]


def test_items_of_a_removed_folder_are_dropped_without_a_line_and_leave_flight():
    rig = Rig()
    items = in_flight(rig.changes, "a", "x", "y")
    del rig.folders["a"]
    rig.pipeline.submit(items)
    assert rig.pool.batches == []
    assert rig.log.lines == []
    assert rig.changes.counts("a") == (0, 0)


def test_dropped_items_leave_no_gap_in_the_positions_of_live_ones():
    rig = Rig()
    (a1,) = in_flight(rig.changes, "a", "x")
    (b1,) = in_flight(rig.changes, "b", "y")
    (a2,) = in_flight(rig.changes, "a", "z")
    (b2,) = in_flight(rig.changes, "b", "w")
    del rig.folders["a"]
    rig.pipeline.submit([a1, b1, a2, b2])
    ((sent, work),) = rig.pool.batches
    assert sent == [b1, b2]
    assert [(w.position, w.path) for w in work] == [(0, "y"), (1, "w")]
    assert rig.changes.counts("a") == (0, 0) and rig.changes.counts("b") == (0, 2)


def test_items_seen_before_their_folder_was_forgotten_are_set_aside_as_stale():
    rig = Rig()
    old = in_flight(rig.changes, "a", "x")
    rig.pipeline.forget("a")  # a reload changed it, or its root changed
    (live,) = in_flight(rig.changes, "b", "y")
    rig.pipeline.submit([*old, live])
    ((sent, _),) = rig.pool.batches
    assert sent == [live]
    assert rig.log.of("file_set_aside", "debug") == [{"folder": "a", "path": "x",
                                                      "error": "seen before the folder changed"}]
    assert rig.folder_stats("a").tally() == (0, 0, 0, 0)
    assert rig.changes.counts("a") == (0, 0)


def test_items_taken_after_the_new_epoch_began_are_live():
    rig = Rig()
    rig.pipeline.forget("a")
    items = in_flight(rig.changes, "a", "x")
    rig.pipeline.submit(items)
    ((sent, _),) = rig.pool.batches
    assert sent == items
    assert rig.log.lines == []


def test_a_held_folder_keeps_its_paths_coalesced_until_released():
    from foldermirror.pipeline.changes import ChangeQueue

    clock = Clock()
    changes = ChangeQueue(clock=clock)
    changes.hold("remote")
    for _ in range(3):
        changes.touch("remote", "a", settle=0.25, ready=True)
    changes.touch("local", "b", settle=0.25, ready=True)
    assert [i.path for i in changes.take(10, timeout=0)] == ["b"]
    assert changes.take(10, timeout=0) == [] and changes.counts("remote") == (1, 0)
    changes.release("remote")
    assert [(i.folder, i.path) for i in changes.take(10, timeout=0)] == [("remote", "a")]


def test_take_more_fills_one_folders_batch_and_keeps_the_others_in_order():
    from foldermirror.pipeline.changes import ChangeQueue

    changes = ChangeQueue(clock=Clock())
    for i in range(3):
        changes.touch("remote", f"r{i}", settle=0.25, ready=True)
        changes.touch("local", f"l{i}", settle=0.25, ready=True)
    first = changes.take(1, timeout=0)
    assert [(i.folder, i.path) for i in first] == [("remote", "r0")]
    more = changes.take_more("remote", 10)
    assert [i.path for i in more] == ["r1", "r2"]
    assert [i.path for i in changes.take(10, timeout=0)] == ["l0", "l1", "l2"]


def test_a_serial_folder_has_one_batch_out_at_a_time_and_the_next_holds_what_came_meanwhile():
    from foldermirror.pipeline.changes import ChangeQueue

    clock = Clock()
    changes = ChangeQueue(clock=clock)
    changes.serial("remote")
    changes.touch("remote", "a", settle=0.25, ready=True)
    changes.touch("remote", "b", settle=0.25, ready=True)
    changes.touch("local", "x", settle=0.25, ready=True)
    first = changes.take(1, timeout=0)
    first += changes.take_more("remote", 10)
    assert [i.path for i in first] == ["a", "b"]
    changes.touch("remote", "c", settle=0.25, ready=True)
    changes.touch("remote", "d", settle=0.25, ready=True)
    assert [i.path for i in changes.take(10, timeout=0)] == ["x"]  # c and d wait for a and b
    assert changes.counts("remote") == (2, 2)
    changes.landed("remote")  # the batch is back from its worker: the next may go
    assert [i.path for i in changes.take(10, timeout=0)] == ["c", "d"]
    changes.touch("remote", "a", settle=0.25, ready=True)  # a, still in flight, waits for its own end
    assert changes.take(10, timeout=0) == []
    changes.done_all(first)
    assert changes.take(10, timeout=0) == []  # and then for the batch of c and d
    changes.landed("remote")
    clock.advance(1)  # a path changed right after it was handed out waits for its settle time
    assert [i.path for i in changes.take(10, timeout=0)] == ["a"]
