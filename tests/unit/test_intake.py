"""The inotify intake on real directories: what each kind of change is reported as, and the
watches it keeps (a watch per directory, none for a directory moved out of the tree)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from foldermirror.pipeline import intake
from foldermirror.pipeline.intake import SOURCE_MASK, TARGET_MASK, Group, Intake, Kind
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)


class _Recorder:
    """Keeps what the reader hands over, relative to the root; can hold the reader on its first event."""

    def __init__(self, root: Path) -> None:
        self.prefix = os.fsencode(root) + b"/"
        self.seen: list[tuple[Kind, str, bool, str | None]] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.watched_on_create: dict[str, bool] = {}
        self.group: Group | None = None
        self.waiting = threading.Event()  # set while the reader is held at the gate

    def _rel(self, path: bytes) -> str:
        return os.fsdecode(path[len(self.prefix):]) if path.startswith(self.prefix) else os.fsdecode(path)

    def handle(self, kind: Kind, path: bytes, is_dir: bool, dest: bytes | None) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(30)
        if kind is Kind.CREATED and is_dir and self.group is not None:
            self.watched_on_create[self._rel(path)] = path in self.group._active_callbacks_by_path
        with self.lock:
            self.seen.append((kind, self._rel(path), is_dir, None if dest is None else self._rel(dest)))

    def kinds(self, rel: str) -> list[Kind]:
        with self.lock:
            return [k for k, p, _, d in self.seen if p == rel or d == rel]

    def describe(self) -> str:
        with self.lock:
            return f"seen: {self.seen[-20:]}"


@pytest.fixture
def watched(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    overflows: list[int] = []
    reader = Intake(on_overflow=lambda: overflows.append(1))
    reader.start()
    recorder = _Recorder(root)
    recorder.group = reader.schedule(str(root), recorder, recursive=True, mask=SOURCE_MASK)
    yield root, recorder, recorder.group, overflows
    reader.stop()
    reader.join(5)
    assert not reader.is_alive()


def _watched_paths(group: Group, root: Path) -> set[str]:
    prefix = os.fsencode(root)
    return {os.fsdecode(p[len(prefix):]) or "/" for p in group._active_callbacks_by_path}


def test_watchdogs_internals_are_what_the_intake_uses():
    assert intake.fits()


def test_a_file_written_is_created_modified_closed(watched):
    root, rec, _, _ = watched
    (root / "a").write_bytes(b"x")
    wait_until(lambda: Kind.CLOSED in rec.kinds("a"), 10, rec.describe)
    assert rec.kinds("a")[-1] is Kind.CLOSED and set(rec.kinds("a")) <= {Kind.CREATED, Kind.MODIFIED, Kind.CLOSED}


def test_a_files_events_in_one_read_come_as_one_and_others_keep_their_order(watched):
    root, rec, _, _ = watched
    rec.gate = threading.Event()
    (root / "marker").write_bytes(b"x")  # the reader hands this over and waits in the handler
    wait_until(lambda: rec.gate is not None and rec.kinds("marker") == [] and _waiting(rec), 10, rec.describe)
    (root / "a").write_bytes(b"x")           # a create, a modify, a close
    with open(root / "b", "wb"):              # a create and a close
        pass
    (root / "c").write_bytes(b"x")
    os.chmod(root / "c", 0o600)               # an attrib after the close: still one, a close
    os.unlink(root / "a")                     # not content: a and its deletion stay apart
    rec.gate.set()
    wait_until(lambda: Kind.DELETED in rec.kinds("a"), 10, rec.describe)
    with rec.lock:
        after = [(k, p) for k, p, _, _ in rec.seen if p != "marker"]
    assert after == [(Kind.CLOSED, "a"), (Kind.CLOSED, "b"), (Kind.CLOSED, "c"), (Kind.DELETED, "a")]


def _waiting(rec: _Recorder) -> bool:
    return rec.waiting.is_set()


def test_a_rename_inside_the_tree_is_one_move(watched):
    root, rec, group, _ = watched
    (root / "d" / "sub").mkdir(parents=True)
    (root / "f").write_bytes(b"x")
    wait_until(lambda: Kind.CLOSED in rec.kinds("f"), 10, rec.describe)
    os.rename(root / "f", root / "g")
    os.rename(root / "d", root / "e")
    wait_until(lambda: Kind.MOVED in rec.kinds("e"), 10, rec.describe)
    with rec.lock:
        moves = [s for s in rec.seen if s[0] is Kind.MOVED]
    assert moves == [(Kind.MOVED, "f", False, "g"), (Kind.MOVED, "d", True, "e")]
    assert rec.kinds("g") == [Kind.MOVED] and Kind.DELETED not in rec.kinds("f")
    # The watches moved with the directory: an event below it has the new path.
    (root / "e" / "sub" / "x").write_bytes(b"x")
    wait_until(lambda: Kind.CLOSED in rec.kinds("e/sub/x"), 10, rec.describe)
    assert _watched_paths(group, root) == {"/", "/e", "/e/sub"}


def test_a_directory_moved_out_is_deleted_and_takes_its_watches(watched, tmp_path):
    root, rec, group, _ = watched
    (root / "d" / "sub").mkdir(parents=True)
    wait_until(lambda: {"/d", "/d/sub"} <= _watched_paths(group, root), 10, rec.describe)
    os.rename(root / "d", tmp_path / "away")
    wait_until(lambda: Kind.DELETED in rec.kinds("d"), 10, rec.describe)
    assert _watched_paths(group, root) == {"/"}
    (tmp_path / "away" / "sub" / "late").write_bytes(b"x")  # no longer ours
    (root / "marker").write_bytes(b"x")
    wait_until(lambda: Kind.CLOSED in rec.kinds("marker"), 10, rec.describe)
    with rec.lock:
        assert not [s for s in rec.seen if "late" in s[1]], rec.seen


def test_a_directory_made_or_moved_in_is_watched_before_it_is_reported(watched, tmp_path):
    root, rec, group, _ = watched
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "old").write_bytes(b"x")
    os.rename(outside, root / "moved-in")
    (root / "made" / "deep").mkdir(parents=True)
    wait_until(lambda: {"moved-in", "made"} <= set(rec.watched_on_create), 10, rec.describe)
    assert rec.watched_on_create["moved-in"] and rec.watched_on_create["made"]
    # What was inside before is reported as found, from the walk that set up the watches.
    wait_until(lambda: rec.kinds("moved-in/inner/old"), 10, rec.describe)
    with rec.lock:
        found = sorted((p, is_dir) for k, p, is_dir, _ in rec.seen if k is Kind.FOUND)
    assert [f for f in found if f[0].startswith("moved-in")] == [("moved-in/inner", True), ("moved-in/inner/old", False)]
    # made/deep: found by the walk, or its own event if the watch on made came first, or both.
    wait_until(lambda: rec.kinds("made/deep"), 10, rec.describe)
    assert set(rec.kinds("made/deep")) <= {Kind.FOUND, Kind.CREATED}, rec.seen
    wait_until(lambda: {"/moved-in", "/moved-in/inner", "/made", "/made/deep"} <= _watched_paths(group, root),
               10, lambda: str(_watched_paths(group, root)))
    (root / "moved-in" / "inner" / "new").write_bytes(b"x")
    wait_until(lambda: Kind.CLOSED in rec.kinds("moved-in/inner/new"), 10, rec.describe)


def test_the_roots_deletion_is_reported_as_such(watched):
    root, rec, _, _ = watched
    (root / "f").write_bytes(b"x")
    os.unlink(root / "f")
    os.rmdir(root)
    wait_until(lambda: any(s[0] is Kind.ROOT_DELETED for s in rec.seen), 10, rec.describe)


def test_a_target_roots_watch_hears_deletions_only(tmp_path):
    top = tmp_path / "target"
    top.mkdir()
    rec = _Recorder(top)
    reader = Intake(on_overflow=lambda: None)
    reader.start()
    try:
        reader.schedule(str(top), rec, recursive=False, mask=TARGET_MASK)
        (top / "kept").write_bytes(b"x")
        os.rename(top / "kept", top / "renamed")
        (top / "gone").write_bytes(b"x")
        os.unlink(top / "gone")
        wait_until(lambda: rec.kinds("gone"), 10, rec.describe)
        assert rec.seen == [(Kind.DELETED, "gone", False, None)]
    finally:
        reader.stop()
        reader.join(5)


def test_an_overflow_is_reported_once_and_watches_the_directories_made_meanwhile(watched):
    """Real load: the reader is held while more events are queued than the kernel keeps."""
    root, rec, group, overflows = watched
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    rec.gate = threading.Event()
    (root / "first").write_bytes(b"x")  # the reader takes this one and waits in the handler
    wait_until(lambda: rec.gate is not None, 1)
    for i in range(limit // 2 + 1000):  # a create and a close each
        with open(root / f"f{i}", "wb"):
            pass
    for name in ("late1", "late2"):
        (root / name / "sub").mkdir(parents=True)  # their events are dropped: the queue is full
    rec.gate.set()
    wait_until(lambda: overflows, 30, rec.describe)
    assert overflows == [1]
    assert {"/late1", "/late1/sub", "/late2", "/late2/sub"} <= _watched_paths(group, root)
    (root / "late2" / "sub" / "x").write_bytes(b"x")
    wait_until(lambda: Kind.CLOSED in rec.kinds("late2/sub/x"), 30, rec.describe)
