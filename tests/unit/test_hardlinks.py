"""Hard links: the inode → names map, the worker's link path, the ChangeQueue's hold on the
names a link flies with, the recorder's answers, and rsync's -H."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import Calls, Clock, FakeLog, folder, state
from foldermirror.catchup.compare import Request, diff_tree
from foldermirror.logs import Repeats
from foldermirror.paths import Excluder
from foldermirror.pipeline.changes import ChangeQueue, Item
from foldermirror.pipeline.copier import Mirror
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.inodes import CANDIDATES_MAX, InodeNames
from foldermirror.pipeline.pool import Result
from foldermirror.pipeline.records import FolderSpec, Outcome, Status
from foldermirror.pipeline.results import ResultRecorder
from foldermirror.pipeline.worker import open_folder
from foldermirror.remote import rsync

I1, I2 = (1, 100), (1, 200)


# -- the map -------------------------------------------------------------------------------------
def test_names_of_an_inode_most_recently_published_first():
    m = InodeNames()
    assert m.others("f", I1, "a") == () and not m.known("f", I1)
    assert m.seen("f", I1, "a") and m.seen("f", I1, "b") and m.seen("f", I1, "c")
    assert m.known("f", I1) and m.names("f") == 3
    assert m.others("f", I1, "a") == ("c", "b")
    m.seen("f", I1, "a")  # published again: first
    assert m.others("f", I1, "x") == ("a", "c", "b") and m.names("f") == 3
    m.drop("f", I1, "c")
    assert m.others("f", I1, "x") == ("a", "b") and m.names("f") == 2
    assert m.others("g", I1, "x") == ()  # per folder
    m.forget("f")
    assert m.names("f") == 0 and not m.known("f", I1)


def test_candidates_are_bounded():
    m = InodeNames()
    for i in range(CANDIDATES_MAX + 5):
        m.seen("f", I1, f"n{i}")
    assert len(m.others("f", I1, "x")) == CANDIDATES_MAX


def test_past_the_bound_names_are_refused_and_said_once():
    m = InodeNames(max_names=3)
    assert all(m.seen("f", I1, p) for p in ("a", "b", "c"))
    assert m.seen("f", I1, "a")  # already there: costs nothing
    assert not m.seen("f", I2, "d") and not m.known("f", I2)
    assert m.full("f") and not m.full("f")  # once


def test_a_whole_folder_walk_replaces_the_names_and_a_refused_one_keeps_the_old():
    m = InodeNames(max_names=4)
    m.seen("f", I1, "gone")
    m.begin_walk("f")
    m.seen("f", I2, "x")
    m.end_walk("f", complete=True)
    assert not m.known("f", I1) and m.others("f", I2, "") == ("x",)
    m.begin_walk("f")
    m.seen("f", I2, "y")
    m.end_walk("f", complete=False)  # cut short: the map stays
    assert m.others("f", I2, "") == ("y", "x")
    m.begin_walk("f")
    for p in ("p", "q", "r"):
        m.seen("f", I1, p)  # the live map and the rebuild share the bound: the third is refused
    m.end_walk("f", complete=True)
    assert m.others("f", I2, "") == ("y", "x")


def test_a_name_costs_under_200_bytes_where_every_file_has_two():
    """The README's figure (148 bytes at 1,000,000 names of ~30 characters; measured the
    same way at 20,000 here to stay quick)."""
    import tracemalloc

    n = 20_000
    m = InodeNames()
    tracemalloc.start()
    try:
        for i in range(n // 2):
            for k in ("", "-2"):
                m.seen("photos", (2049, 10_000_000 + i), f"albums/2024-{i % 997:03d}/IMG_{i:07d}{k}.jpg")
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.names("photos") == n
    assert used / n < 200, used / n


# -- the worker ----------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "a").write_bytes(b"content")
    os.link(src / "a", src / "b")
    m = open_folder(FolderSpec(str(src), str(dst), True, False, None, hardlinks=True), "a")
    assert isinstance(m, Mirror), m
    yield src, dst, m
    m.source.close()
    m.target.close()


def inode(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_dev, st.st_ino


def test_the_worker_asks_for_names_links_to_a_checked_one_and_never_leaves_a_temp(tree):
    src, dst, m = tree
    (asked,) = m.mirror("a", None)
    assert asked.status is Status.HAS_LINKS and asked.inode == inode(src / "a") and not (dst / "a").exists()
    (copied,) = m.mirror("a", None, link_to=())
    assert copied.status is Status.COPIED and copied.linked_to is None and copied.inode == inode(src / "a")
    (in_place,) = m.mirror("a", None)  # in place: no need to ask
    assert in_place.status is Status.UNCHANGED and in_place.inode == inode(src / "a")
    (linked,) = m.mirror("b", None, link_to=("a",))
    assert (linked.status, linked.linked_to, linked.bytes) == (Status.COPIED, "a", 0)
    assert inode(dst / "a") == inode(dst / "b")
    (again,) = m.mirror("b", None, link_to=("a",))
    assert again.status is Status.UNCHANGED
    assert sorted(os.listdir(dst)) == ["a", "b"]


def test_the_worker_copies_when_the_name_to_link_to_is_stale_missing_or_another_inode(tree):
    src, dst, m = tree
    (dst / "a").write_bytes(b"old mirror")  # stale: not the inode's content
    (out,) = m.mirror("b", None, link_to=("a", "nowhere"))
    assert out.status is Status.COPIED and out.linked_to is None and out.bytes == len(b"content")
    assert inode(dst / "a") != inode(dst / "b")
    (src / "c").write_bytes(b"content")  # same bytes, another inode in the source
    os.link(src / "c", src / "c2")
    m.mirror("c", None, link_to=())
    (out,) = m.mirror("b", None, link_to=("c",))
    assert out.status is Status.UNCHANGED and inode(dst / "b") != inode(dst / "c")  # b was in place


def test_a_link_replaces_a_separate_copy_atomically(tree):
    src, dst, m = tree
    m.mirror("a", None, link_to=())
    m.mirror("b", None, link_to=())  # a copy of its own (no names known)
    assert inode(dst / "a") != inode(dst / "b")
    (out,) = m.mirror("b", None, link_to=("a",))
    assert out.linked_to == "a" and inode(dst / "a") == inode(dst / "b")


def test_without_hardlinks_the_worker_copies_as_ever(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_bytes(b"x")
    os.link(src / "a", src / "b")
    m = open_folder(FolderSpec(str(src), str(dst), True, False, None), "a")
    assert isinstance(m, Mirror)
    try:
        assert [o.status for p in ("a", "b") for o in m.mirror(p, None)] == [Status.COPIED, Status.COPIED]
        assert inode(dst / "a") != inode(dst / "b")
    finally:
        m.source.close()
        m.target.close()


# -- the walk ------------------------------------------------------------------------------------
def test_the_walk_tells_every_multi_linked_name_and_finds_mirrors_apart(tree):
    src, dst, m = tree
    for p in ("a", "b"):
        m.mirror(p, None, link_to=())  # two copies
    seen: list[tuple[tuple[int, int], str]] = []
    diffs = [d.path for d in diff_tree(str(src), str(dst), Excluder(()), True, "t", links=lambda i, p: seen.append((i, p)))]
    assert sorted(p for _, p in seen) == ["a", "b"] and {i for i, _ in seen} == {inode(src / "a")}
    assert len(diffs) == 1 and diffs[0] in ("a", "b")  # the second name met
    assert list(diff_tree(str(src), str(dst), Excluder(()), True, "t")) == []  # without links: in place


def test_a_walk_for_names_never_stands_in_for_a_catch_up():
    names, startup = Request("f", "", "hardlinks", ready=True), Request("f", "", "startup", ready=True)
    assert startup.covers(names) and not names.covers(startup)


# -- the queue -----------------------------------------------------------------------------------
def test_a_link_waits_for_the_name_it_links_to_and_holds_it_while_it_flies():
    q = ChangeQueue(clock=Clock())
    q.touch("f", "a", settle=0, ready=True)
    (a,) = q.take(10, timeout=0)
    q.touch("f", "b", settle=0, ready=True, link_to=("a",))
    q.touch("f", "c", settle=0, ready=True, link_to=("a",))
    assert q.take(10, timeout=0) == []  # a is being published
    q.done(a)
    links = q.take(10, timeout=0)
    assert sorted(i.path for i in links) == ["b", "c"] and all(i.link_to == ("a",) for i in links)  # both at once
    q.touch("f", "a", settle=0, ready=True)
    assert q.take(10, timeout=0) == []  # read by the links in flight
    q.done(links[0])
    assert q.take(10, timeout=0) == []
    q.done(links[1])
    (again,) = q.take(10, timeout=0)
    assert again.path == "a" and again.link_to is None


def test_a_link_to_itself_is_dropped_and_a_plain_touch_keeps_the_hint():
    q = ChangeQueue(clock=Clock())
    q.touch("f", "b", settle=0, ready=True, link_to=("b", "a"))
    q.touch("f", "b", settle=0, ready=True)
    (b,) = q.take(10, timeout=0)
    assert b.link_to == ("a",)


# -- the recorder --------------------------------------------------------------------------------
class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.log = FakeLog()
        self.changes = ChangeQueue(clock=self.clock)
        self.walks = Calls()
        self.inodes = InodeNames()
        self.recorder = ResultRecorder(
            log=self.log, changes=self.changes, folders={"data": state(folder("data", Path("/srv")))},
            folder_stats=lambda name: FolderStats(), repeats=Repeats(window=60, clock=self.clock), wake=Calls(),
            request_walk=self.walks, inodes=self.inodes)

    def run(self, path: str, *outcomes: Outcome, link_to: tuple[str, ...] | None = None) -> None:
        item = Item(folder="data", path=path, origin=None, first_seen=self.clock(), link_to=link_to)
        self.recorder.on_results([Result(item, list(outcomes), 1.0)], 1)

    def due(self) -> dict[str, tuple[str, ...] | None]:
        self.clock.advance(1.0)
        return {i.path: i.link_to for i in self.changes.take(100, timeout=0)}


def test_the_recorder_answers_a_file_with_other_names():
    rig = Rig()
    rig.inodes.seen("data", I1, "a")
    rig.run("b", Outcome("b", Status.HAS_LINKS, "file", inode=I1))
    assert rig.due() == {"b": ("a",)}
    assert rig.log.of("file_mirrored") == []


def test_an_inode_never_seen_has_its_names_looked_for_then_is_copied():
    rig = Rig()
    rig.run("b", Outcome("b", Status.HAS_LINKS, "file", inode=I1))
    assert rig.walks.calls == [(Request("data", "", "hardlinks", ready=True),)]
    assert rig.due() == {"b": None}  # asked again, after settle
    rig.recorder.walking = lambda: True
    rig.run("b", Outcome("b", Status.HAS_LINKS, "file", inode=I1))
    assert rig.due() == {"b": None}  # and again while the comparison runs
    rig.recorder.walking = lambda: False
    rig.run("b", Outcome("b", Status.HAS_LINKS, "file", inode=I1))
    assert rig.due() == {"b": ()} and len(rig.walks.calls) == 1  # still alone: a copy


def test_a_fresh_copy_relinks_the_other_names_and_an_unchecked_one_in_place_is_checked():
    rig = Rig()
    rig.inodes.seen("data", I1, "a")
    rig.inodes.seen("data", I1, "b")
    rig.run("a", Outcome("a", Status.COPIED, "file", 7, inode=I1), link_to=("b",))  # rewritten in place
    assert rig.due() == {"b": ("a",)}
    rig.run("b", Outcome("b", Status.COPIED, "file", 0, inode=I1, linked_to="a"), link_to=("a",))
    assert rig.due() == {}  # a link relinks nothing
    assert rig.log.of("file_mirrored")[-1]["linked_to"] == "a"
    rig.run("b", Outcome("b", Status.UNCHANGED, "file", inode=I1))
    assert rig.due() == {"b": ("a",)}
    rig.run("b", Outcome("b", Status.UNCHANGED, "file", inode=I1), link_to=("a",))
    assert rig.due() == {}


def test_a_full_map_is_said_once():
    rig = Rig()
    rig.inodes.max_names = 1
    rig.inodes.seen("data", I2, "x")
    for p in ("a", "b"):
        rig.run(p, Outcome(p, Status.COPIED, "file", 1, inode=I1), link_to=())
    (line,) = rig.log.of("hardlinks_map_full")
    assert line["fix"] and line["folder"] == "data"


# -- rsync ---------------------------------------------------------------------------------------
def test_rsync_keeps_hard_links_only_when_asked():
    common = dict(mode=rsync.Mode.TRANSFER, source_root="/src", host="h", remote_root="/dst")
    assert "-H" in rsync.argv(**common, hardlinks=True)
    assert "-H" not in rsync.argv(**common)
