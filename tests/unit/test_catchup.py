"""Catch-ups (catchup/tracking.py): the comparison walk feeding a real ChangeQueue on real
tmp folders, the mass-delete guard, sync_finished once the folder has settled, and the
unreadable-directories list.

The Reconciler's thread is never started: the test runs the walks it was asked for, on its
own thread (`run_walks`), as that thread would.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import Calls, Clock, FakeLog, folder, state
from foldermirror.catchup import tracking
from foldermirror.catchup.compare import Difference, Request, WalkStats
from foldermirror.catchup.tracking import CatchUpTracker
from foldermirror.folderstate import FolderState
from foldermirror.pipeline.changes import ChangeQueue, Item
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.records import Outcome, Status


class Rig:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.config = folder("data", tmp_path, **settings)
        self.config.source.mkdir()
        self.config.target.mkdir()
        self.log = FakeLog()
        self.clock = Clock()
        self.changes = ChangeQueue(clock=self.clock)
        self.folders: dict[str, FolderState] = {"data": state(self.config)}
        self.stats: dict[str, FolderStats] = {}
        self.wake = Calls()
        self.catch_ups = CatchUpTracker(log=self.log, changes=self.changes, folders=self.folders,
                                        lock=threading.RLock(), instance="inst0001", folder_stats=self.folder_stats,
                                        wake=self.wake)

    def folder_stats(self, name: str) -> FolderStats:
        return self.stats.setdefault(name, FolderStats())

    def run_walks(self) -> list[Request]:
        """What the Reconciler's thread would do with the requests queued so far."""
        reconciler = self.catch_ups.reconciler
        done = []
        while reconciler._requests:
            req = reconciler._requests.pop(0)
            self.catch_ups._walk(req)
            done.append(req)
        return done

    def mirror(self, items: list[Item]) -> None:
        """The workers' part: each item copied, its outcome counted, its flight over."""
        for item in items:
            self.folder_stats(item.folder).record(Outcome(item.path, Status.COPIED, "file", bytes=10))
        self.changes.done_all(items)


def test_a_requested_catch_up_queues_every_missing_file_ready(tmp_path: Path):
    rig = Rig(tmp_path)
    for name in ("a", "b", "c"):
        (rig.config.source / name).write_bytes(b"x" * 10)
    rig.catch_ups.request("data", "startup")
    assert rig.wake.count == 1
    assert rig.run_walks() == [Request("data", "", "startup", ready=True)]
    c = rig.folders["data"].catch_up
    assert c is not None and c.walk_done and (c.to_copy, c.differences) == (3, 3)
    assert rig.changes.counts("data") == (3, 0)
    assert sorted(i.path for i in rig.changes.take(10, timeout=0)) == ["a", "b", "c"]  # ready: no settle wait
    assert rig.stats["data"].directories == 1


def test_sync_finished_waits_until_the_folder_has_settled(tmp_path: Path):
    rig = Rig(tmp_path)
    for name in ("a", "b", "c"):
        (rig.config.source / name).write_bytes(b"x" * 10)
    rig.catch_ups.request("data", "startup")
    rig.catch_ups.finish(rig.clock.now)
    assert rig.log.of("sync_finished") == []  # the walk has not run
    rig.run_walks()
    rig.catch_ups.finish(rig.clock.now)
    assert rig.log.of("sync_finished") == []  # three paths pending
    items = rig.changes.take(10, timeout=0)
    rig.catch_ups.finish(rig.clock.now)
    assert rig.log.of("sync_finished") == []  # three in flight
    rig.mirror(items)
    rig.catch_ups.finish(rig.clock.now)
    (line,) = rig.log.of("sync_finished", "info")
    assert {k: line[k] for k in ("folder", "reason", "files_mirrored", "bytes_mirrored", "failed", "differences")} == {
        "folder": "data", "reason": "startup", "files_mirrored": 3, "bytes_mirrored": 30, "failed": 0, "differences": 3}
    assert rig.folders["data"].catch_up is None
    rig.catch_ups.finish(rig.clock.now)
    assert len(rig.log.of("sync_finished")) == 1


def test_a_catch_up_counts_only_what_it_mirrored(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.folder_stats("data").record(Outcome("earlier", Status.COPIED, "file", bytes=5))
    (rig.config.source / "a").write_bytes(b"x" * 10)
    rig.catch_ups.request("data", "rescan")
    rig.run_walks()
    rig.mirror(rig.changes.take(10, timeout=0))
    rig.catch_ups.finish(rig.clock.now)
    (line,) = rig.log.of("sync_finished")
    assert (line["files_mirrored"], line["bytes_mirrored"]) == (1, 10)


def test_a_request_during_a_catch_up_continues_it(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    rig.catch_ups.request("data", "overflow")
    c = rig.folders["data"].catch_up
    assert c is not None and c.reason == "startup" and not c.walk_done
    rig.catch_ups.finish(rig.clock.now)
    assert rig.log.of("sync_finished") == []  # its second walk has not run yet


def test_a_source_that_looks_empty_holds_the_deletions_back(tmp_path: Path):
    rig = Rig(tmp_path, delete=True)
    for i in range(20):
        (rig.config.target / f"f{i:02}").write_bytes(b"old")
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    (line,) = rig.log.of("mass_delete_held", "error")
    assert (line["source_entries"], line["target_entries"], line["would_delete"]) == (0, 20, 20)
    assert rig.changes.counts("data") == (0, 0)
    c = rig.folders["data"].catch_up
    assert c is not None and c.walk_done and c.differences == 0


def test_a_few_deletions_are_queued(tmp_path: Path):
    rig = Rig(tmp_path, delete=True)
    for i in range(20):
        (rig.config.target / f"f{i:02}").write_bytes(b"old")
        if i >= 2:
            (rig.config.source / f"f{i:02}").write_bytes(b"newer")
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    assert rig.log.of("mass_delete_held") == []
    queued = {i.path for i in rig.changes.take(100, timeout=0)}
    assert {"f00", "f01"} <= queued and len(queued) == 20  # 18 differ (size), 2 extra


def test_a_subtree_walk_never_holds_deletions_back(tmp_path: Path):
    rig = Rig(tmp_path, delete=True)
    (rig.config.source / "sub").mkdir()
    (rig.config.target / "sub").mkdir()
    for i in range(20):
        (rig.config.target / "sub" / f"f{i:02}").write_bytes(b"old")
    rig.catch_ups.reconciler.request(Request("data", "sub", "subtree", ready=True))
    rig.run_walks()
    assert rig.log.of("mass_delete_held") == []
    assert rig.changes.counts("data") == (20, 0)


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """A fake diff_tree that finds no difference and reports, by subtree walked, the
    directories it could not list (the tests run as root, for whom chmod 000 locks nothing)."""
    unreadable: dict[str, list[str]] = {}

    def fake_diff_tree(source: str, target: str, excluded: Any, delete: bool, instance: str, sub: str = "",
                       stats: WalkStats | None = None, **_: Any) -> Iterator[Difference]:
        assert stats is not None
        stats.unreadable = list(unreadable.get(sub, []))
        stats.directories = 7
        yield from ()

    monkeypatch.setattr(tracking, "diff_tree", fake_diff_tree)
    yield unreadable


def test_a_full_walk_replaces_the_unreadable_list(tmp_path: Path, walks: dict[str, list[str]]):
    rig = Rig(tmp_path)
    walks[""] = ["b", "a/x"]
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    assert rig.stats["data"].unreadable == ("a/x", "b")
    assert [line["path"] for line in rig.log.of("source_unreadable", "warning")] == ["b", "a/x"]
    walks[""] = ["c"]
    rig.catch_ups.request("data", "rescan")
    rig.run_walks()
    assert rig.stats["data"].unreadable == ("c",)
    assert rig.stats["data"].directories == 7


def test_a_subtree_walk_patches_only_what_it_covered(tmp_path: Path, walks: dict[str, list[str]]):
    rig = Rig(tmp_path)
    walks[""] = ["a/x", "ab", "b"]
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    walks["a"] = ["a/y"]
    rig.catch_ups.reconciler.request(Request("data", "a", "subtree", ready=True))
    rig.run_walks()
    assert rig.stats["data"].unreadable == ("a/y", "ab", "b")  # "ab" is not below "a"
    walks["a"] = []
    rig.catch_ups.reconciler.request(Request("data", "a", "subtree", ready=True))
    rig.run_walks()
    assert rig.stats["data"].unreadable == ("ab", "b")


def test_a_subtree_walk_leaves_the_catch_up_and_the_directory_count_alone(tmp_path: Path,
                                                                          walks: dict[str, list[str]]):
    rig = Rig(tmp_path)
    rig.catch_ups.reconciler.request(Request("data", "a", "subtree", ready=True))
    rig.run_walks()
    assert rig.stats["data"].directories is None
    assert rig.folders["data"].catch_up is None


# -- the last full comparison (foldermirror_last_full_comparison_timestamp_seconds) ----------
def test_a_catch_up_that_compared_the_whole_folder_records_when_it_ended(tmp_path: Path):
    rig = Rig(tmp_path)
    (rig.config.source / "a").write_bytes(b"x" * 10)
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    rig.catch_ups.finish(rig.clock.now)
    assert rig.folder_stats("data").last_full_comparison is None  # walked, but "a" is not mirrored yet
    rig.mirror(rig.changes.take(10, timeout=0))
    before = time.time()
    rig.catch_ups.finish(rig.clock.now)
    assert rig.log.of("sync_finished")
    stamp = rig.folder_stats("data").last_full_comparison
    assert stamp is not None and before <= stamp <= time.time()


def test_a_comparison_that_failed_part_way_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken_diff_tree(*args: Any, **kwargs: Any) -> Iterator[Difference]:
        raise PermissionError(13, "Permission denied", "/srv/data-dst")
        yield  # a generator, as diff_tree is

    rig = Rig(tmp_path)
    monkeypatch.setattr(tracking, "diff_tree", broken_diff_tree)
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    rig.catch_ups.finish(rig.clock.now)
    assert rig.log.of("reconcile_failed", "error") and rig.log.of("sync_finished")  # the catch-up still ends
    assert rig.folder_stats("data").last_full_comparison is None
    # The next comparison that runs to its end does count.
    monkeypatch.undo()
    rig.catch_ups.request("data", "rescan")
    rig.run_walks()
    rig.catch_ups.finish(rig.clock.now)
    assert rig.folder_stats("data").last_full_comparison is not None


def test_a_subtree_walk_is_not_a_full_comparison(tmp_path: Path, walks: dict[str, list[str]]):
    rig = Rig(tmp_path)
    rig.catch_ups.reconciler.request(Request("data", "a", "subtree", ready=True))
    rig.run_walks()
    rig.catch_ups.finish(rig.clock.now)
    assert rig.folder_stats("data").last_full_comparison is None


def test_totals_follow_the_walk_then_the_copies_then_the_finished_catch_up(tmp_path: Path):
    rig = Rig(tmp_path)
    for name, size in (("a", 10), ("b", 20), ("c", 30)):
        (rig.config.source / name).write_bytes(b"x" * size)
    (rig.config.target / "b").write_bytes(b"x" * 20)
    source_b = (rig.config.source / "b").stat()
    os.utime(rig.config.target / "b", ns=(source_b.st_atime_ns, source_b.st_mtime_ns))  # b is in place
    assert rig.catch_ups.totals().comparing  # nothing requested yet: still to be compared
    rig.catch_ups.request("data", "startup")
    seen: list[tracking.SyncCounts] = []
    touch = rig.changes.touch

    def touch_and_look(*args: Any, **kwargs: Any) -> None:
        seen.append(rig.catch_ups.totals())  # from inside the walk, as sync's bar reads it
        touch(*args, **kwargs)
    rig.changes.touch = touch_and_look
    rig.run_walks()
    assert seen and seen[0].comparing and seen[0].entries >= 1 and seen[0].to_copy >= 1, seen
    after = rig.catch_ups.totals()
    assert after == tracking.SyncCounts(comparing=False, entries=3, to_copy=2, bytes_to_copy=40, files=0, bytes=0,
                                        deleted=0, failed=0)
    rig.mirror(rig.changes.take(10, timeout=0))
    rig.catch_ups.finish(rig.clock())
    assert rig.folders["data"].catch_up is None  # ended: its counts are still the folder's totals
    assert rig.catch_ups.totals() == after._replace(files=2, bytes=20)


# -- a new directory's walk ------------------------------------------------------------------
def test_a_new_directorys_walk_compares_only_what_no_worker_looked_at_since_its_watch(tmp_path: Path):
    from foldermirror.catchup.compare import diff_tree
    from foldermirror.paths import Excluder

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (dst / "d").mkdir(parents=True)
    for name in ("before", "pending", "handed_out", "untold"):
        (src / "d" / name).write_bytes(b"new bytes")
    clock = Clock()
    q = ChangeQueue(clock=clock)
    q.touch("f", "d/before", settle=0.25, ready=True)
    q.done_all(q.take(10, timeout=0))  # handed out before the directory's watch: not proof
    clock.now += 1.0
    since = clock.now
    q.touch("f", "d/pending", settle=0.25, ready=True)
    q.touch("f", "d/handed_out", settle=0.25, ready=True)
    [first, second] = q.take(10, timeout=0)
    q.done_all([second])
    assert {first.path, second.path} == {"d/pending", "d/handed_out"}
    q.touch("f", first.path, settle=0.25)  # pending again

    def skip(path: str) -> bool:
        return q.looked_at_since("f", path, since=since)

    found = {d.path for d in diff_tree(str(src), str(dst), Excluder(()), True, "i", sub="d", skip=skip)}
    assert found == {"d/before", "d/untold"}


def test_an_overflows_walk_compares_no_file_that_waits_for_a_worker_but_each_one_in_flight(tmp_path: Path):
    rig = Rig(tmp_path)
    src = rig.config.source
    for name in ("queued", "flying", "untold", "linked"):
        (src / name).write_bytes(b"new bytes")
    os.link(src / "linked", src / "linked2")
    rig.changes.touch("data", "flying", settle=0.25, ready=True)
    [flying] = rig.changes.take(10, timeout=0)
    for name in ("queued", "linked", "linked2"):
        rig.changes.touch("data", name, settle=0.25, ready=True)
    rig.catch_ups.request("data", "overflow")
    assert [r.reason for r in rig.run_walks()] == ["overflow"]
    c = rig.folders["data"].catch_up
    assert c is not None and c.walk_done
    # Not "queued": its worker reads it later anyway. The one in flight may have been read
    # before a change whose event was lost; a multi-linked file's names are walked for the
    # map of its inode's names.
    assert c.differences == 4, c
    rig.changes.done_all([flying])
    assert rig.changes.pending("data", "flying"), "found again while in flight: it goes once more"


def test_a_later_walk_of_a_new_directory_is_not_covered_by_an_earlier_one():
    early = Request("f", "d", "subtree", ready=False, only_unknown=True, since=1.0)
    late = Request("f", "d", "subtree", ready=False, only_unknown=True, since=2.0)
    full = Request("f", "", "rescan", ready=True)
    assert late.covers(early) and not early.covers(late)
    assert full.covers(late)


def test_what_an_overflows_comparison_finds_is_live_work_and_a_catch_ups_is_bulk(tmp_path: Path):
    rig = Rig(tmp_path)
    (rig.config.source / "old").write_bytes(b"x")
    rig.catch_ups.request("data", "startup")
    rig.run_walks()
    assert rig.changes._entries[("data", "old")].bulk  # behind live changes
    rig.mirror(rig.changes.take(10, timeout=0))
    (rig.folders["data"].config.target / "old").write_bytes(b"x")
    os.utime(rig.config.target / "old", ns=(os.stat(rig.config.source / "old").st_mtime_ns,) * 2)
    (rig.config.source / "saved").write_bytes(b"y")  # its events were lost to an overflow
    rig.catch_ups.request("data", "overflow")
    rig.run_walks()
    assert ("data", "old") not in rig.changes._entries, "in sync: not found again"
    assert not rig.changes._entries[("data", "saved")].bulk  # stands in for its lost events
