"""The metrics (view/metrics.py) a snapshot makes, read back from the text a scrape serves:
every family's name, labels and value, and `promtool check metrics` on the whole (when
promtool is on PATH). The snapshot is built by hand; no server is started. A real daemon's
endpoint is scraped in daemon/test_operator.py.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from foldermirror import __version__
from foldermirror.pipeline.folder_stats import LastError, Tally
from foldermirror.remote.links import LinkView
from foldermirror.view.metrics import Metrics
from foldermirror.view.read_model import CatchUpView, DaemonView, FolderView, Health
from helpers import NO_PROMTOOL, PROMTOOL, REPO, Samples, promtool_problems, samples


def folder_view(name: str, **changes: Any) -> FolderView:
    base = FolderView(
        name=name, source=f"/srv/{name}", target=f"/mirror/{name}", state=Health.IN_SYNC, problems=(),
        watches_complete=True, pending=0, in_flight=0, lag_s=0.0, files_mirrored=0, bytes_mirrored=0, deleted=0,
        failed=0, failing=0, failures={}, last_error=None, watched_directories=1, unreadable=(), catch_up=None,
        last_full_comparison=None)
    return dataclasses.replace(base, **changes)


def daemon_view(*folders: FolderView, max_user_watches: int | None = 8192) -> DaemonView:
    return DaemonView(
        version=__version__, pid=1, config="/etc/foldermirror/config.yaml", started=1_800_000_000.0, uptime_s=5.0,
        workers=2, worker_restarts=1, overflow_rescans=2, watcher_alive=True, watch_problems=(),
        control_socket=None, metrics="127.0.0.1:9108", unusable=(), max_user_watches=max_user_watches,
        folders=folders, totals=Tally())


def busy_view() -> DaemonView:
    """One folder catching up with a failing path, one in sync and compared, one remote."""
    error = LastError("x", "permission denied", "EACCES", 1_800_000_001.0)
    photos = folder_view(
        "photos", state=Health.DEGRADED, pending=3, in_flight=2, lag_s=1.5, files_mirrored=10, bytes_mirrored=4096,
        deleted=1, failed=4, failing=1, failures={"EACCES": 3, "other": 1}, last_error=error, watched_directories=7,
        catch_up=CatchUpView(reason="startup", files_mirrored=6, to_copy=9, differences=12, walk_done=True,
                             elapsed_s=2.0))
    docs = folder_view("docs", catch_up=CatchUpView(reason="rescan", files_mirrored=1, to_copy=0, differences=0,
                                                    walk_done=False, elapsed_s=0.5),
                       state=Health.CATCHING_UP)
    compared = folder_view("compared", last_full_comparison=1_800_000_100.0, watched_directories=None)
    offsite = folder_view("offsite", state=Health.REMOTE_DOWN,
                          link=LinkView(host="mirror@backup", state="down", since_s=3.0, last_error="refused",
                                        rtt_ms=12.0, reconnects=2, retry_in_s=4.0))
    return daemon_view(photos, docs, compared, offsite)


def exposition(view: DaemonView) -> str:
    m = Metrics(lambda: view)
    m.observe("photos", 0.2)
    return generate_latest(m.registry).decode()


def by_folder(s: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["folder"]: value for labels, value in s[name].items()}


def test_every_family_has_its_name_labels_and_value():
    s = samples(exposition(busy_view()))
    assert s["foldermirror_build_info"] == {(("version", __version__),): 1}
    assert by_folder(s, "foldermirror_mirrored_files_total")["photos"] == 10
    assert by_folder(s, "foldermirror_mirrored_bytes_total")["photos"] == 4096
    assert by_folder(s, "foldermirror_deletions_total")["photos"] == 1
    assert s["foldermirror_failures_total"] == {(("errno", "EACCES"), ("folder", "photos")): 3,
                                                (("errno", "other"), ("folder", "photos")): 1}
    assert s["foldermirror_overflow_rescans_total"] == {(): 2} and s["foldermirror_worker_restarts_total"] == {(): 1}
    assert by_folder(s, "foldermirror_pending_paths")["photos"] == 3
    assert by_folder(s, "foldermirror_in_flight_paths")["photos"] == 2
    assert by_folder(s, "foldermirror_lag_seconds")["photos"] == 1.5
    assert by_folder(s, "foldermirror_failing_paths") == {"photos": 1, "docs": 0, "compared": 0, "offsite": 0}
    # A folder not compared to the end since start has no timestamp (not 0: that would be 1970).
    assert by_folder(s, "foldermirror_last_full_comparison_timestamp_seconds") == {"compared": 1_800_000_100.0}
    assert by_folder(s, "foldermirror_watched_directories") == {"photos": 7, "docs": 1, "compared": 0, "offsite": 1}
    assert s["foldermirror_inotify_max_user_watches"] == {(): 8192}
    assert s["foldermirror_remote_up"] == {(("host", "mirror@backup"),): 0}
    assert s["foldermirror_remote_reconnects_total"] == {(("host", "mirror@backup"),): 2}
    assert s["foldermirror_remote_rtt_seconds"] == {(("host", "mirror@backup"),): 0.012}
    assert s["foldermirror_folder_state"][(("folder", "photos"), ("state", "degraded"))] == 1
    assert s["foldermirror_folder_state"][(("folder", "photos"), ("state", "in_sync"))] == 0
    assert by_folder(s, "foldermirror_mirror_latency_seconds_count") == {"photos": 1}


def test_catch_up_progress_is_zero_where_none_runs():
    s = samples(exposition(busy_view()))
    assert by_folder(s, "foldermirror_catchup_running") == {"photos": 1, "docs": 1, "compared": 0, "offsite": 0}
    assert by_folder(s, "foldermirror_catchup_comparing") == {"photos": 0, "docs": 1, "compared": 0, "offsite": 0}
    assert by_folder(s, "foldermirror_catchup_copied_files") == {"photos": 6, "docs": 1, "compared": 0, "offsite": 0}
    assert by_folder(s, "foldermirror_catchup_files_to_copy") == {"photos": 9, "docs": 0, "compared": 0,
                                                                   "offsite": 0}


def test_an_unreadable_watch_limit_has_no_sample():
    s = samples(exposition(daemon_view(folder_view("a"), max_user_watches=None)))
    assert "foldermirror_inotify_max_user_watches" not in s


def test_the_standard_collectors_are_on_the_private_registry():
    s = samples(exposition(daemon_view(folder_view("a"))))
    assert s["process_resident_memory_bytes"][()] > 0 and s["process_start_time_seconds"][()] > 1_600_000_000
    assert "process_cpu_seconds_total" in s and "process_open_fds" in s
    assert any(dict(labels)["implementation"] for labels in s["python_info"])
    # Two of them side by side (a reload, the tests) do not clash: neither uses the global registry.
    samples(exposition(daemon_view(folder_view("b"))))


def test_no_old_name_is_left():
    text = exposition(busy_view())
    for old in ("foldermirror_bytes_mirrored", "foldermirror_files_mirrored", 'kind="', "foldermirror_pending{",
                "foldermirror_in_flight{"):
        assert old not in text, old


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_finds_nothing_to_lint():
    assert promtool_problems(exposition(busy_view())) == ""


# -- the README's Metrics section ---------------------------------------------------------------
def readme_metrics() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("### Metrics\n", 1)[1].split("\n### ", 1)[0]


def families(text: str) -> set[str]:
    """The families in an exposition, less the histogram's `_created` (the text format gives it
    a family of its own; it is the histogram's, not a metric to list)."""
    return {name for name in re.findall(r"^# TYPE (\S+) ", text, re.M) if not name.endswith("_created")}


def test_the_readme_lists_every_metric_and_no_other():
    listed = set(re.findall(r"^\| `(foldermirror_\w+)` \|", readme_metrics(), re.M))
    exposed = {name for name in families(exposition(busy_view())) if name.startswith("foldermirror_")}
    assert listed == exposed, (listed - exposed, exposed - listed)


def test_the_readme_alerts_name_only_metrics_there_are(tmp_path: Path):
    (rules,) = re.findall(r"```yaml\n(.*?)```", readme_metrics(), re.S)
    exposed = families(exposition(busy_view()))
    named = set(re.findall(r"\b(foldermirror_\w+)", rules))
    assert named and named <= exposed, named - exposed
    if PROMTOOL is not None:
        (tmp_path / "rules.yml").write_text(rules)
        r = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_versions_metrics_only_for_folders_that_keep_them():
    from foldermirror.versioning import VersionsView

    kept = folder_view("kept", versions=VersionsView(count=4, bytes=1000, oldest_ns=1_799_000_000 * 10**9,
                                                      counted=True))
    empty = folder_view("empty", versions=VersionsView(count=0, bytes=0, oldest_ns=None, counted=False))
    s = samples(generate_latest(Metrics(lambda: daemon_view(kept, empty, folder_view("off"))).registry).decode())
    assert s["foldermirror_versions"] == {(("folder", "kept"),): 4, (("folder", "empty"),): 0}
    assert s["foldermirror_versions_bytes"] == {(("folder", "kept"),): 1000, (("folder", "empty"),): 0}
    assert s["foldermirror_versions_oldest_timestamp_seconds"] == {(("folder", "kept"),): 1_799_000_000}
