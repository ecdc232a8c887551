"""WatchHealth (pipeline/watch_health.py): a dying observer, source roots that go and come
back, entries taken from a target. A fake Watcher says what the real one would; time is the
`now` each tick is given and a fake clock for the observer thread's reports.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

from fakes import Calls, Clock, FakeLog, folder, state
from foldermirror.catchup.compare import Request
from foldermirror.config import FolderConfig
from foldermirror.folderstate import FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.target_health import Probe, path_identity
from foldermirror.pipeline.watch_health import OBSERVER_DEATH_WINDOW, OBSERVER_DEATHS_MAX, TARGET_QUIET, WatchHealth


class FakeWatcher:
    """The Watcher's surface WatchHealth uses, answering what a test sets."""

    def __init__(self) -> None:
        self.is_alive = True
        self.restarts = 0
        self.roots: list[tuple[str, str]] = []   # what the next check_roots() reports
        self.identities: dict[str, tuple[int, int] | None] = {}
        self.unwatched: set[str] = set()
        self.lost: list[str] = []
        self.targets: list[str] = []
        self.rewatched: list[str] = []
        self.removed: list[str] = []

    def alive(self) -> bool:
        return self.is_alive

    def restart(self) -> None:
        self.restarts += 1
        self.is_alive = True

    def check_roots(self) -> list[tuple[str, str]]:
        out, self.roots = self.roots, []
        return out

    def identity(self, name: str) -> tuple[int, int] | None:
        return self.identities.get(name)

    def watched(self, name: str) -> bool:
        return name not in self.unwatched

    def rewatch(self, name: str) -> str | None:
        self.rewatched.append(name)
        return None

    def watch_target(self, f: FolderConfig) -> None:
        self.targets.append(f.name)

    def mark_lost(self, name: str) -> None:
        self.lost.append(name)

    def remove(self, name: str) -> None:
        self.removed.append(name)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.log = FakeLog()
        self.clock = Clock(0.0)
        self.changes = ChangeQueue(clock=self.clock)
        config = folder("data", tmp_path)
        config.target.mkdir()  # the target check finds it as admitted, and leaves it alone
        self.folders: dict[str, FolderState] = {
            "data": state(config, root_id=(1, 100), target_id=path_identity(str(config.target)))}
        self.catch_ups = Calls()
        self.walks = Calls()
        self.wake = Calls()
        self.health = WatchHealth(log=self.log, folders=self.folders, changes=self.changes,
                                  request_catch_up=self.catch_ups, request_walk=self.walks, locks={},
                                  relock=Calls((None, "")), drop_folder=Calls(), wake=self.wake, clock=self.clock)
        self.watcher = FakeWatcher()
        self.watcher.identities["data"] = (1, 100)
        self.health.watcher = self.watcher

    def die(self, now: float) -> None:
        self.watcher.is_alive = False
        self.health.tick(now, rescan=False)


# -- a dying observer -------------------------------------------------------------------------
def test_a_dead_observer_is_restarted_and_every_folder_compared(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.die(5.0)
    assert rig.watcher.restarts == 1
    (line,) = rig.log.of("watcher_restarted", "error")
    assert (line["deaths"], line["window_s"]) == (1, OBSERVER_DEATH_WINDOW)
    assert rig.catch_ups.calls == [("data", "watch_restored")]
    assert rig.health.stable(5.0)


def test_a_live_observer_is_left_alone(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.health.tick(5.0, rescan=False)
    assert rig.watcher.restarts == 0 and rig.log.lines == [] and rig.catch_ups.calls == []


def test_a_restarted_observer_on_another_root_makes_pending_work_stale(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.changes.touch("data", "a", settle=0.25)
    rig.watcher.identities["data"] = (1, 200)
    rig.die(5.0)
    assert rig.folders["data"].root_id == (1, 200)
    assert rig.changes.epoch("data") == 1 and rig.changes.counts("data") == (0, 0)


def test_an_observer_dying_too_often_is_unstable_until_the_window_passes(tmp_path: Path):
    rig = Rig(tmp_path)
    for i in range(OBSERVER_DEATHS_MAX):
        rig.die(10.0 + i)
    assert rig.health.stable(13.0)
    rig.die(14.0)
    assert not rig.health.stable(14.0)
    assert [line["deaths"] for line in rig.log.of("observer_unstable", "error")] == [OBSERVER_DEATHS_MAX + 1]
    assert rig.health.problems() == [f"unhealthy: the observer died {OBSERVER_DEATHS_MAX + 1} times in 60s"]
    assert not rig.health.stable(10.0 + OBSERVER_DEATH_WINDOW)  # the first death is still in the window
    assert len(rig.log.of("observer_unstable")) == 1          # said once
    assert rig.health.stable(10.5 + OBSERVER_DEATH_WINDOW)
    assert len(rig.log.of("observer_stable", "info")) == 1
    assert rig.health.problems() == []


def test_a_dead_observer_is_not_stable(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.watcher.is_alive = False
    assert not rig.health.stable(1.0)


# -- source roots -------------------------------------------------------------------------------
def test_a_missing_root_is_said_and_its_pending_work_dropped(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.changes.touch("data", "a", settle=0.25)
    rig.watcher.roots = [("data", "missing")]
    rig.health.tick(1.0, rescan=True)
    assert rig.folders["data"].missing is True
    (line,) = rig.log.of("source_missing", "error")
    assert line["path"] == str(rig.folders["data"].config.source)
    assert rig.changes.counts("data") == (0, 0) and rig.changes.epoch("data") == 1
    assert rig.catch_ups.calls == []  # nothing to compare with until it is back


def test_a_restored_root_is_compared_again(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.folders["data"].missing = True
    rig.watcher.roots = [("data", "restored")]
    rig.health.tick(1.0, rescan=True)
    assert rig.folders["data"].missing is False
    assert rig.log.of("source_restored", "info")[0]["same_folder"] is True
    assert rig.catch_ups.calls == [("data", "watch_restored")]


def test_a_replaced_root_takes_the_new_identity(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.folders["data"].suspect = True
    rig.watcher.identities["data"] = (2, 7)
    rig.watcher.roots = [("data", "replaced")]
    rig.health.tick(1.0, rescan=True)
    s = rig.folders["data"]
    assert (s.missing, s.suspect, s.root_id) == (False, False, (2, 7))
    assert rig.log.of("source_restored")[0]["same_folder"] is False
    assert rig.catch_ups.calls == [("data", "watch_restored")]


def test_a_root_change_of_a_folder_no_longer_served_is_ignored(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.watcher.roots = [("gone", "missing"), ("data", "restored")]
    rig.health.tick(1.0, rescan=True)
    assert rig.log.events() == ["source_restored"]
    assert rig.catch_ups.calls == [("data", "watch_restored")]


def test_roots_are_looked_at_on_their_schedule(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.watcher.roots = [("data", "missing")]
    rig.health.tick(1.0, rescan=False)
    assert rig.log.of("source_missing") == []  # the safety poll is 30s away
    rig.health.tick(30.0, rescan=False)
    assert len(rig.log.of("source_missing")) == 1


def test_a_root_a_worker_found_changed_is_looked_at_on_the_next_pass(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.health.tick(100.0, rescan=True)
    rig.folders["data"].suspect = True
    rig.health.check_roots_soon()
    assert rig.wake.count == 1
    rig.health.tick(101.0, rescan=False)
    assert rig.folders["data"].suspect is False
    assert rig.catch_ups.calls == [("data", "source_recheck")]


def test_a_suspect_root_that_is_not_watched_waits(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.folders["data"].suspect = True
    rig.watcher.unwatched.add("data")
    rig.health.tick(1.0, rescan=True)
    assert rig.folders["data"].suspect is True and rig.catch_ups.calls == []


def test_a_lost_root_is_marked_and_looked_at_on_the_next_pass(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.health.tick(100.0, rescan=True)
    rig.health.root_lost("data")
    assert rig.watcher.lost == ["data"] and rig.wake.count == 1
    rig.watcher.roots = [("data", "missing")]
    rig.health.tick(100.1, rescan=False)
    assert len(rig.log.of("source_missing")) == 1


# -- entries taken from a target -----------------------------------------------------------------
def test_target_losses_are_mended_only_once_the_target_is_quiet(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.clock.now = 10.0
    rig.health.target_entry_lost("data", "a.txt", False)
    assert rig.wake.count == 1
    rig.health.tick(10.0 + TARGET_QUIET / 2, rescan=False)
    assert rig.changes.counts("data") == (0, 0) and rig.walks.calls == []
    rig.clock.now = 10.8
    rig.health.target_entry_lost("data", "sub", True)  # an rm -rf still under way: the wait starts again
    assert rig.health.deadline() == 10.8 + TARGET_QUIET
    rig.health.tick(10.0 + TARGET_QUIET, rescan=False)
    assert rig.changes.counts("data") == (0, 0) and rig.walks.calls == []
    rig.health.tick(10.8 + TARGET_QUIET, rescan=False)
    assert rig.changes.counts("data") == (1, 0)
    assert [i.path for i in rig.changes.take(10, timeout=0)] == ["a.txt"]
    assert rig.walks.calls == [(Request("data", "sub", "target_changed", ready=True),)]


def test_target_losses_are_mended_once(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.health.target_entry_lost("data", "sub", True)
    rig.health.tick(TARGET_QUIET, rescan=False)
    rig.health.tick(TARGET_QUIET + 5, rescan=False)
    assert len(rig.walks.calls) == 1
    assert rig.health.deadline() == 30.0  # only the roots' safety poll is left


def test_losses_in_a_folder_no_longer_served_are_dropped(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.health.target_entry_lost("data", "a.txt", False)
    del rig.folders["data"]
    rig.health.tick(TARGET_QUIET, rescan=False)
    assert rig.changes.counts("data") == (0, 0) and rig.walks.calls == []


# -- the target as a whole, through the TargetHealth seam --------------------------------------
class FakeTargetHealth:
    """A target whose identity a test sets, and which can be made again or not."""

    def __init__(self, identity: tuple[int, int] | None) -> None:
        self.id = identity
        self.remade = 0
        self.cannot: OSError | None = None

    def probe(self, *, create: bool, user: str) -> Probe:
        return Probe(None, "fake")

    def identity(self) -> tuple[int, int] | None:
        return self.id

    def remake(self) -> None:
        if self.cannot is not None:
            raise self.cannot
        self.remade += 1
        self.id = (9, self.remade)


def fake_target_rig(tmp_path: Path) -> tuple[Rig, FakeTargetHealth]:
    rig = Rig(tmp_path)
    target = FakeTargetHealth((9, 0))
    rig.folders["data"] = replace(rig.folders["data"], target=target, target_id=(9, 0))
    return rig, target


def test_a_target_that_stays_the_same_is_left_alone(tmp_path: Path):
    rig, target = fake_target_rig(tmp_path)
    rig.health.tick(100.0, rescan=True)
    assert target.remade == 0 and rig.log.of("target_lost") == [] and rig.catch_ups.calls == []


def test_a_replaced_target_is_made_again_said_once_and_compared(tmp_path: Path):
    rig, target = fake_target_rig(tmp_path)
    target.id = (9, 77)  # another directory stands there now
    rig.health.tick(100.0, rescan=True)
    (line,) = rig.log.of("target_lost", "error")
    assert "replaced by another directory" in line["error"]
    assert target.remade == 1 and rig.folders["data"].target_id == (9, 1)
    assert rig.watcher.targets == ["data"] and rig.catch_ups.calls == [("data", "target_restored")]


def test_a_target_that_cannot_be_made_again_is_said_once_and_retried(tmp_path: Path):
    rig, target = fake_target_rig(tmp_path)
    target.id, target.cannot = None, PermissionError(errno.EACCES, "Permission denied", "/t")
    rig.health.tick(100.0, rescan=True)
    rig.health.tick(200.0, rescan=True)
    (line,) = rig.log.of("target_lost", "error")
    assert "cannot be made again: Permission denied (EACCES)" in line["error"] and "fix" in line
    assert rig.folders["data"].target_lost and rig.catch_ups.calls == []
    target.cannot = None
    rig.health.tick(300.0, rescan=True)
    assert rig.log.events("info")[-1] == "target_restored" and not rig.folders["data"].target_lost
    assert rig.catch_ups.calls == [("data", "target_restored")]
