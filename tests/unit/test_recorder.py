"""ResultRecorder (pipeline/results.py): worker outcomes → log lines, FolderStats, retries.

A recording logger, a real ChangeQueue on a fake clock, real FolderStats and Repeats; the
results are built by hand as the pool's collector would hand them over.
"""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from typing import Any

import pytest

from fakes import Calls, Clock, FakeLog, folder, in_flight, state
from foldermirror.catchup.compare import Request
from foldermirror.folderstate import FolderState
from foldermirror.logs import Repeats
from foldermirror.pipeline.changes import ChangeQueue, Item
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.pool import Result
from foldermirror.pipeline.records import Outcome, Status
from foldermirror.pipeline.results import ResultRecorder


class Rig:
    """A ResultRecorder for one folder "data", and everything it talks to."""

    def __init__(self, *, once: bool = False, observe: Any = None) -> None:
        self.clock = Clock()
        self.log = FakeLog()
        self.changes = ChangeQueue(clock=self.clock)
        self.folders: dict[str, FolderState] = {"data": state(folder("data", Path("/srv")))}
        self.stats: dict[str, FolderStats] = {}
        self.walks = Calls()
        self.suspect = Calls()
        self.wake = Calls()
        self.recorder = ResultRecorder(
            log=self.log, changes=self.changes, folders=self.folders, folder_stats=self.folder_stats,
            repeats=Repeats(window=60, clock=self.clock), wake=self.wake, request_walk=self.walks,
            root_suspect=self.suspect, observe=observe or Calls(), once=once)

    def folder_stats(self, name: str) -> FolderStats:
        return self.stats.setdefault(name, FolderStats())

    def take(self, *paths: str) -> list[Item]:
        return in_flight(self.changes, "data", *paths)

    def report(self, item: Item, *outcomes: Outcome, duration_ms: float = 1.5, pid: int = 4242) -> None:
        self.recorder.on_results([Result(item, list(outcomes), duration_ms)], pid)

    def fail(self, path: str, err: int = errno.EACCES) -> None:
        """Take `path` (it must be due) and report it failed."""
        (item,) = self.take(path)
        self.report(item, Outcome(path, Status.FAILED, "file", error=f"{errno.errorcode[err]} on {path}", errno=err))


def test_a_copied_file_is_one_file_mirrored_line_and_counted():
    rig = Rig()
    (item,) = rig.take("a.txt")
    rig.clock.advance(0.25)
    rig.report(item, Outcome("a.txt", Status.COPIED, "file", bytes=123), duration_ms=2.0)
    assert rig.log.events() == ["file_mirrored"]
    (line,) = rig.log.of("file_mirrored", "info")
    assert line == {"folder": "data", "path": "a.txt", "kind": "file", "bytes": 123, "duration_ms": 2.0,
                    "latency_ms": 250.0, "worker_pid": 4242}
    assert rig.stats["data"].tally() == (1, 123, 0, 0)
    assert rig.changes.counts("data") == (0, 0)


def test_a_renamed_directory_names_its_origin_and_asks_for_a_walk_of_its_subtree():
    rig = Rig()
    (item,) = rig.take("new")
    rig.report(item, Outcome("new", Status.RENAMED, "dir", renamed_from="old"))
    (line,) = rig.log.of("file_mirrored")
    assert (line["path"], line["kind"], line["renamed_from"]) == ("new", "dir", "old")
    assert rig.walks.calls == [(Request("data", "new", "subtree", ready=True),)]
    assert rig.stats["data"].files == 0  # directories are not counted


def test_a_moved_directory_item_asks_for_one_walk_however_it_was_replayed():
    rig = Rig()
    (item,) = rig.take("new")
    rig.report(dataclasses.replace(item, walk=True), Outcome("new", Status.RENAMED, "dir", renamed_from="old"))
    assert rig.walks.calls == [(Request("data", "new", "subtree", ready=True),)]


def test_a_failure_is_retried_with_a_doubling_backoff():
    rig = Rig()
    rig.changes.touch("data", "a.txt", settle=0.25, ready=True)
    delays = []
    for _ in range(3):
        rig.fail("a.txt")
        line = rig.log.of("mirror_failed")[-1]
        assert line["will_retry"] is True and "retried with backoff" in line["fix"]
        delays.append(line["retry_in_s"])
        # Back in the queue, not due before the backoff ends.
        assert rig.changes.counts("data") == (1, 0)
        assert rig.changes.next_due() == rig.clock.now + line["retry_in_s"]
        assert rig.changes.take(1, timeout=0) == []
        rig.clock.advance(line["retry_in_s"])
    assert delays == [1.0, 2.0, 4.0]
    assert [line["attempt"] for line in rig.log.of("mirror_failed")] == [1, 2, 3]
    assert rig.stats["data"].failed == 3 and list(rig.stats["data"].failing) == ["a.txt"]


def test_a_repeated_failure_within_the_window_is_folded_to_debug_and_wakes_the_main_loop():
    rig = Rig()
    rig.changes.touch("data", "a.txt", settle=0.25, ready=True)
    rig.fail("a.txt")
    rig.clock.advance(1.0)
    rig.fail("a.txt")
    first, second = rig.log.of("mirror_failed")
    assert "folded" not in first and second["folded"] is True
    assert [lvl for lvl, name, _ in rig.log.lines] == ["error", "debug"]
    assert rig.wake.count == 1


def test_a_success_after_failures_starts_the_backoff_again():
    rig = Rig()
    rig.changes.touch("data", "a.txt", settle=0.25, ready=True)
    rig.fail("a.txt")
    rig.clock.advance(1.0)
    (item,) = rig.take("a.txt")
    rig.report(item, Outcome("a.txt", Status.COPIED, "file", bytes=1))
    assert rig.stats["data"].failing == {}
    rig.changes.touch("data", "a.txt", settle=0.25, ready=True)
    rig.clock.advance(1.0)
    rig.fail("a.txt")
    assert rig.log.of("mirror_failed")[-1]["retry_in_s"] == 1.0


def test_a_permanent_error_is_not_retried():
    rig = Rig()
    rig.changes.touch("data", "x" * 300, settle=0.25, ready=True)
    rig.fail("x" * 300, errno.ENAMETOOLONG)
    (line,) = rig.log.of("mirror_failed", "error")
    assert line["will_retry"] is False and line["errno"] == "ENAMETOOLONG"
    assert "retry_in_s" not in line and "retried with backoff" not in line["fix"]
    assert rig.changes.counts("data") == (0, 0)


def test_sync_retries_nothing():
    rig = Rig(once=True)
    rig.changes.touch("data", "a.txt", settle=0.25, ready=True)
    rig.fail("a.txt")
    (line,) = rig.log.of("mirror_failed", "error")
    assert line["will_retry"] is False and "run sync again" in line["fix"] and "retry_in_s" not in line
    assert rig.changes.counts("data") == (0, 0)


def test_sync_counts_a_changed_root_as_a_failure():
    rig = Rig(once=True)
    (item,) = rig.take("a.txt")
    rig.report(item, Outcome("a.txt", Status.ROOT_CHANGED, error="the source root was replaced"))
    assert rig.stats["data"].failed == 1
    assert rig.log.of("mirror_failed", "error")[0]["will_retry"] is False
    assert rig.folders["data"].suspect is False and rig.suspect.count == 0


def test_a_changed_root_makes_the_folder_suspect_and_asks_for_a_root_check():
    rig = Rig()
    (item,) = rig.take("a.txt")
    rig.report(item, Outcome("a.txt", Status.ROOT_CHANGED, error="the source root was replaced"))
    assert rig.folders["data"].suspect is True
    assert rig.suspect.count == 1
    assert rig.log.of("file_set_aside", "debug") == [{"folder": "data", "path": "a.txt",
                                                      "error": "the source root was replaced"}]
    assert rig.stats["data"].failed == 0
    assert rig.changes.counts("data") == (0, 0)  # set aside: the root check's comparison covers it


def test_a_busy_file_is_warned_about_once_until_it_is_mirrored():
    rig = Rig()
    for _ in range(3):
        (item,) = rig.take("log.txt")
        rig.report(dataclasses.replace(item, busy=True), Outcome("log.txt", Status.CHANGED, "file"))
        assert rig.changes.counts("data") == (1, 0)  # looked at again
        rig.clock.advance(10)
    assert len(rig.log.of("file_busy", "warning")) == 1
    assert rig.log.of("file_busy")[0]["max_delay_s"] == 5.0
    (item,) = rig.take("log.txt")
    rig.report(dataclasses.replace(item, busy=True), Outcome("log.txt", Status.COPIED, "file", bytes=9))
    assert rig.log.of("file_mirrored")[0]["busy"] is True
    rig.changes.touch("data", "log.txt", settle=0.25)
    rig.clock.advance(10)
    (item,) = rig.take("log.txt")
    rig.report(dataclasses.replace(item, busy=True), Outcome("log.txt", Status.CHANGED, "file"))
    assert len(rig.log.of("file_busy")) == 2  # busy again after a complete copy: said again


def test_a_change_during_a_quiet_copy_is_no_warning():
    rig = Rig()
    (item,) = rig.take("a.txt")
    rig.report(item, Outcome("a.txt", Status.CHANGED, "file"))
    assert rig.log.events() == ["file_changed_during_copy"]
    assert rig.changes.counts("data") == (1, 0)


def test_a_handler_error_for_one_result_still_lands_every_path():
    def observe(name: str, outcome: Outcome, latency_ms: float) -> None:
        if outcome.path == "bad":
            raise RuntimeError("observer bug")

    rig = Rig(observe=observe)
    bad, good = sorted(rig.take("bad", "good"), key=lambda i: i.path)
    rig.recorder.on_results([Result(bad, [Outcome("bad", Status.COPIED, "file")], 1.0),
                             Result(good, [Outcome("good", Status.COPIED, "file")], 1.0)], 7)
    (err,) = rig.log.of("internal_error", "error")
    assert err == {"folder": "data", "path": "bad", "error": "RuntimeError('observer bug')"}
    assert [line["path"] for line in rig.log.of("file_mirrored")] == ["good"]
    assert rig.changes.counts("data") == (0, 0)


def test_results_of_a_folder_no_longer_served_are_ignored_but_land():
    rig = Rig()
    (item,) = rig.take("a.txt")
    del rig.folders["data"]
    rig.report(item, Outcome("a.txt", Status.FAILED, "file", error="EIO", errno=errno.EIO))
    assert rig.log.lines == []
    assert rig.stats == {}
    assert rig.changes.counts("data") == (0, 0)


@pytest.mark.parametrize("status, event", [(Status.DELETED, "file_deleted"), (Status.UNCHANGED, "file_checked"),
                                           (Status.GONE, "file_checked"), (Status.SKIPPED, "file_skipped"),
                                           (Status.STALE, "file_set_aside")])
def test_each_other_status_has_its_line(status: Status, event: str):
    rig = Rig()
    (item,) = rig.take("a")
    rig.report(item, Outcome("a", status, "file"))
    assert rig.log.events() == [event]


def test_a_skipped_lock_file_says_to_rename_it():
    rig = Rig()
    (item,) = rig.take(".foldermirror.lock")
    rig.report(item, Outcome(".foldermirror.lock", Status.SKIPPED, "file", error="reserved name"))
    (line,) = rig.log.of("file_skipped", "warning")
    assert "rename it in the source" in line["fix"]
