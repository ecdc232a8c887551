"""The read model (view/read_model.py): one folder's health, the DaemonView the parts make,
its `status --json` document and the STATUS= line. Every part it reads is a fake.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fakes import Clock, folder, state
from foldermirror import checks
from foldermirror.folderstate import CatchUp, FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.folder_stats import FolderStats, LastError, Tally
from foldermirror.pipeline.watch_health import Watching
from foldermirror.remote.links import LinkState, LinkView
from foldermirror.view.read_model import DaemonView, Health, ReadModel, health, status_line
from foldermirror.view.status_table import render
from helpers import REPO

ROOT = Path("/srv")


def watching(alive: bool = True, unwatched: tuple[str, ...] = ()) -> Watching:
    return Watching(alive=alive, watched=lambda name: name not in unwatched)


def catch_up(reason: str = "startup", walk_done: bool = False, to_copy: int = 0) -> CatchUp:
    return CatchUp(reason, started=0.0, start=Tally(), walk_done=walk_done, to_copy=to_copy)


def failing(*paths: str) -> FolderStats:
    stats = FolderStats()
    for p in paths:
        stats.failing[p] = LastError(p, "EACCES", "EACCES", 0.0)
    return stats


# -- health() ---------------------------------------------------------------------------------
def test_a_watched_settled_folder_is_in_sync():
    assert health(state(folder("a", ROOT)), FolderStats(), watching(), None) == (Health.IN_SYNC, (), True)


def test_a_missing_source_is_degraded_and_says_so():
    state_, problems, complete = health(state(folder("a", ROOT), missing=True), FolderStats(), watching(), None)
    assert state_ is Health.DEGRADED
    assert problems == ("source folder /srv/a-src is missing",)
    assert complete is False


def test_a_lost_target_is_degraded():
    _, problems, _ = health(state(folder("a", ROOT), target_lost=True), FolderStats(), watching(), None)
    assert problems == ("target folder /srv/a-dst is gone and cannot be made again",)


def test_unreadable_directories_are_named_the_first_five_and_counted():
    stats = FolderStats(unreadable=("", "b", "c", "d", "e", "f", "g"))
    state_, (problem,), complete = health(state(folder("a", ROOT)), stats, watching(), None)
    assert state_ is Health.DEGRADED and complete is False
    assert problem == ("7 directories cannot be read, so they are neither watched nor mirrored: "
                       "., b, c, d, e and 2 more")  # the folder's top as "."


def test_one_unreadable_directory_reads_as_one():
    _, (problem,), _ = health(state(folder("a", ROOT)), FolderStats(unreadable=("x",)), watching(), None)
    assert problem == "1 directory cannot be read, so it is neither watched nor mirrored: x"


def test_failing_paths_degrade_the_folder_but_not_its_watches():
    state_, problems, complete = health(state(folder("a", ROOT)), failing("x", "y"), watching(), None)
    assert state_ is Health.DEGRADED and problems == ("2 paths failing",)
    assert complete is True
    assert health(state(folder("a", ROOT)), failing("x"), watching(), None)[1] == ("1 path failing",)


def test_a_catch_up_is_catching_up():
    assert health(state(folder("a", ROOT), catch_up=catch_up("overflow")), FolderStats(), watching(),
                  None) == (Health.CATCHING_UP, (), True)


def test_a_watcher_not_up_during_the_start_up_walk_is_no_problem():
    s = state(folder("a", ROOT), catch_up=catch_up("startup"))
    assert health(s, FolderStats(), watching(alive=False), None) == (Health.CATCHING_UP, (), False)


def test_a_dead_watcher_after_the_start_up_walk_is_a_problem():
    s = state(folder("a", ROOT), catch_up=catch_up("startup", walk_done=True))
    state_, problems, complete = health(s, FolderStats(), watching(alive=False), None)
    assert state_ is Health.DEGRADED and problems == ("not watched: changes are only seen by rescans",)
    assert complete is False


def test_a_folder_the_watcher_lost_is_not_watched():
    _, problems, complete = health(state(folder("a", ROOT)), FolderStats(), watching(unwatched=("a",)), None)
    assert problems == ("not watched: changes are only seen by rescans",) and complete is False


def test_without_a_watcher_sync_is_never_complete_nor_degraded_for_it():
    assert health(state(folder("a", ROOT)), FolderStats(), None, None) == (Health.IN_SYNC, (), False)


def test_a_watch_shortage_is_a_problem():
    shortage = checks.watch_shortage_of(1500, 1000)
    _, problems, complete = health(state(folder("a", ROOT)), FolderStats(), watching(), shortage)
    assert problems == ("1,500 directories but fs.inotify.max_user_watches is 1,000: raise it to at least 2,000",)
    assert complete is False


# -- the snapshot -------------------------------------------------------------------------
@dataclass
class FakeConfig:
    path: Path = Path("/etc/foldermirror/config.yaml")
    workers: int = 2


class Parts:
    """Everything a ReadModel reads, as plain values a test sets."""

    def __init__(self, *names: str) -> None:
        self.clock = Clock()
        self.changes = ChangeQueue(clock=self.clock)
        self.folders: dict[str, FolderState] = {n: state(folder(n, ROOT)) for n in names}
        self.stats: dict[str, FolderStats] = {n: FolderStats(directories=1) for n in names}
        self.watching: Watching | None = watching()
        self.watch_problems: list[str] = []
        self.unusable: list[str] = []
        self.links: dict[str, LinkView] = {}
        self.model = ReadModel(
            config=FakeConfig, folders=self.folders, folder_stats=self.stats.__getitem__,
            all_stats=lambda: list(self.stats.values()), changes=self.changes, watching=lambda: self.watching,
            watch_problems=lambda: self.watch_problems, overflows=lambda: 3, restarts=lambda: 1,
            unusable=lambda: self.unusable, addresses=lambda: ("/run/fm/control.sock", None),
            started=0.0, started_wall=1_800_000_000.0, link=lambda f: self.links.get(f.name))

    def view(self) -> DaemonView:
        return self.model.snapshot()


@pytest.fixture(autouse=True)
def plenty_of_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "max_user_watches", lambda: 1_000_000)


def test_the_snapshot_reads_every_part():
    parts = Parts("a")
    parts.changes.touch("a", "x", settle=0.25)
    parts.clock.advance(2)
    view = parts.view()
    assert (view.workers, view.worker_restarts, view.overflow_rescans, view.watcher_alive) == (2, 1, 3, True)
    assert (view.control_socket, view.metrics, view.config) == ("/run/fm/control.sock", None,
                                                              "/etc/foldermirror/config.yaml")
    (a,) = view.folders
    assert (a.name, a.pending, a.in_flight, a.lag_s, a.watched_directories) == ("a", 1, 0, 2.0, 1)


def test_the_watch_shortage_counts_every_folders_directories(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(checks, "max_user_watches", lambda: 1000)
    parts = Parts("a", "b")
    parts.stats["a"].directories, parts.stats["b"].directories = 600, 500
    for f in parts.view().folders:
        assert f.problems == ("1,100 directories but fs.inotify.max_user_watches is 1,000: "
                              "raise it to at least 2,000",)
        assert f.watches_complete is False and f.state is Health.DEGRADED


def test_a_catch_up_counts_the_files_copied_since_it_began():
    parts = Parts("a")
    parts.stats["a"].files = 5
    parts.folders["a"].catch_up = CatchUp("rescan", 0.0, parts.stats["a"].tally(), walk_done=True, to_copy=8)
    parts.stats["a"].files = 7
    (a,) = parts.view().folders
    assert a.catch_up is not None and (a.catch_up.files_mirrored, a.catch_up.to_copy) == (2, 8)


def test_the_last_full_comparison_and_the_watch_limit_are_carried_through():
    parts = Parts("a", "b")
    parts.stats["a"].last_full_comparison = 1_800_000_123.4
    view = parts.view()
    a, b = view.folders
    assert (a.last_full_comparison, b.last_full_comparison) == (1_800_000_123.4, None)
    assert view.max_user_watches == 1_000_000
    a_doc, b_doc = view.to_json()["folders"]
    assert (a_doc["last_full_comparison"], b_doc["last_full_comparison"]) == ("2027-01-15T08:02:03Z", None)


# -- status --json ------------------------------------------------------------------------------
TOP_KEYS = {"version", "pid", "config", "started", "uptime_s", "workers", "worker_restarts", "overflow_rescans",
            "watcher_alive", "control_socket", "metrics", "folders"}
FOLDER_KEYS = {"name", "source", "target", "state", "problems", "pending", "in_flight", "lag_s", "files_mirrored",
               "bytes_mirrored", "deleted", "failed", "failing", "failures", "last_error", "watches_complete",
               "watched_directories", "unreadable", "catch_up", "last_full_comparison", "link", "versions"}


def json_view() -> dict[str, Any]:
    parts = Parts("a", "b")
    parts.stats["a"].failing["x"] = parts.stats["a"].last_error = LastError("x", "EACCES", "EACCES", 1_800_000_000.0)
    parts.stats["a"].failures["EACCES"] = 1
    parts.stats["b"].unreadable = tuple(f"d{i}" for i in range(7))
    parts.folders["b"].catch_up = catch_up("startup", walk_done=True, to_copy=4)
    return parts.view().to_json()


def test_status_json_has_exactly_the_documented_keys():
    doc = json_view()
    assert set(doc) == TOP_KEYS
    a, b = doc["folders"]
    assert set(a) == set(b) == FOLDER_KEYS
    assert set(a["last_error"]) == {"path", "error", "errno", "time"} and a["last_error"]["time"].endswith("Z")
    assert a["last_error"]["errno"] == "EACCES"
    assert b["unreadable"] == {"count": 7, "paths": ["d0", "d1", "d2", "d3", "d4"]}
    assert set(b["catch_up"]) == {"reason", "files_mirrored", "to_copy", "differences", "walk_done", "elapsed_s"}
    assert (a["state"], b["state"]) == ("degraded", "degraded")


def test_status_json_names_follow_the_log_lines():
    """Totals are files_mirrored and bytes_mirrored, an errno name is `errno` (`kind` is a file
    type, and the document has none), and every duration ends in _s."""
    doc = json_view()
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(doc)
    assert not keys & {"files", "bytes", "kind", "seconds", "since", "elapsed", "lag", "uptime"}, keys
    assert {"files_mirrored", "bytes_mirrored", "errno", "elapsed_s", "lag_s", "uptime_s"} <= keys


def test_the_status_table_reads_the_document():
    table = render(json_view())
    assert "b: catching up (startup): 0 of 4 files copied" in table, table
    assert "a: last error 2027-01-15T08:00:00Z x: EACCES" in table, table


def test_status_json_round_trips_through_json():
    doc = json_view()
    assert json.loads(json.dumps(doc)) == doc


def test_every_key_the_readme_names_for_status_json_is_there():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Watching it", 1)[1].split("\n## ", 1)[0]
    paragraph = section[section.index("`--json`"):]
    paragraph = paragraph[:paragraph.index("exits 3")]
    # Less the flag, the command and the suffix of durations.
    named = set(re.findall(r"`([a-z_.\[\]]+)`", paragraph)) - {"--json", "status", "_s"}
    doc = json_view()
    folder_doc = doc["folders"][0] | {"catch_up": doc["folders"][1]["catch_up"]}
    link_doc = {f.name for f in dataclasses.fields(LinkView)} | {str(s) for s in LinkState}
    known = set(doc) | set(folder_doc) | {"folders[].state"} | set(folder_doc["unreadable"]) \
        | set(folder_doc["catch_up"]) | set(folder_doc["last_error"]) | link_doc \
        | {"count", "bytes_kept", "oldest", "counted"}  # versions (null in this document: see test_versions_in_status)
    states = {"in_sync", "catching_up", "degraded", "remote_down"}
    assert named - states <= known, named - states - known
    assert states <= named and states == {str(h) for h in Health}


def test_a_folder_whose_host_is_down_is_remote_down_everywhere():
    parts = Parts("a", "b")
    parts.links["a"] = LinkView(host="mirror@backup", state="down", since_s=30.0, last_error="Connection refused",
                                rtt_ms=None, reconnects=2, retry_in_s=8.0)
    parts.links["b"] = LinkView(host="mirror@backup2", state="up", since_s=30.0, last_error=None, rtt_ms=11.0,
                                reconnects=0, retry_in_s=None)
    view = parts.view()
    a, b = view.folders
    assert a.state is Health.REMOTE_DOWN and b.state is Health.IN_SYNC
    assert a.problems == ("host mirror@backup cannot be reached: Connection refused; retrying in 8s",)
    assert status_line(view).endswith("; 1 remote down (a)")
    assert view.to_json()["folders"][0]["link"]["last_error"] == "Connection refused"


# -- the STATUS= line ---------------------------------------------------------------------------
def test_status_line_while_comparing():
    parts = Parts("a", "b")
    parts.folders["b"].catch_up = catch_up("startup")
    parts.stats["b"].files = 12
    assert status_line(parts.view()) == "catching up b: 12 files copied, still comparing"


def test_status_line_once_the_comparison_is_done():
    parts = Parts("a")
    parts.folders["a"].catch_up = catch_up("startup", walk_done=True, to_copy=1500)
    parts.stats["a"].files = 1200
    assert status_line(parts.view()) == "catching up a: 1,200/1,500 files"


def test_status_line_counts_live_changes_past_what_the_comparison_found():
    parts = Parts("a")
    parts.folders["a"].catch_up = catch_up("startup", walk_done=True, to_copy=3)
    parts.stats["a"].files = 5
    assert status_line(parts.view()) == "catching up a: 5/5 files"


def test_status_line_while_watching():
    parts = Parts("a", "b")
    parts.changes.touch("a", "x", settle=0.25)
    parts.changes.touch("b", "y", settle=0.25)
    parts.stats["a"].files, parts.stats["b"].files = 1000, 234
    assert status_line(parts.view()) == "watching 2 folders, 2 pending, 1,234 files mirrored"


def test_status_line_names_degraded_and_unusable_folders():
    parts = Parts("a", "b", "c")
    parts.folders["a"].missing = True
    parts.stats["c"].failing["x"] = LastError("x", "EIO", "EIO", 0.0)
    parts.unusable = ["z", "y"]
    parts.watch_problems = ["unhealthy: the observer died 4 times in 60s"]
    assert status_line(parts.view()) == ("watching 3 folders, 0 pending, 0 files mirrored; "
                                         "unhealthy: the observer died 4 times in 60s; "
                                         "2 degraded (a, c); 2 unusable (y, z)")


def test_status_line_of_one_folder_is_singular():
    assert status_line(Parts("a").view()) == "watching 1 folder, 0 pending, 0 files mirrored"


def test_versions_in_status_json_table_and_metrics():
    from foldermirror.versioning import VersionsView
    from foldermirror.view.read_model import FolderView

    view = VersionsView(count=3, bytes=3072, oldest_ns=1_800_000_000 * 10**9, counted=True)
    doc = json_view()
    doc["folders"][0]["versions"] = {"count": 3, "bytes_kept": 3072, "counted": True, "oldest": "2027-01-15T08:00:00Z"}
    assert "a: 3 versions kept, 3.0 KiB, oldest 2027-01-15T08:00:00Z" in render(doc)
    assert {f.name for f in dataclasses.fields(FolderView)} >= {"versions"} and view.count == 3
