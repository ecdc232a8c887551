"""The operator's view against a real daemon: status, metrics, dry run, the control socket, logs.

The pure parts (Tracer, Repeats, the console format, the config keys) are in unit/test_operator.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

import foldermirror
from helpers import (
    LOCK_NAME,
    NO_PROMTOOL,
    PROMTOOL,
    TEMP_MARK,
    fm,
    pair,
    promtool_problems,
    scrape,
    scrape_text,
    snapshot,
    status,
    wait_mirrored,
    wait_until,
    write_config,
)


def live(sock: Path, name: str = "data") -> dict[str, Any]:
    """One folder's status straight from the socket (no CLI start-up per poll)."""
    return folder(ask(sock, b'{"request": "status"}\n')["status"], name)


def folder(snap: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in snap["folders"] if f["name"] == name)


def ask(sock_path: Path, payload: bytes, timeout: float = 10) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def entries(root: Path) -> tuple[int, int, int]:
    """(files below root, directories including root, bytes of files); no temp files, no lock file."""
    count, dirs, size = 0, 1, 0
    for dirpath, dirnames, filenames in os.walk(root):
        names = [n for n in filenames if not n.startswith(TEMP_MARK) and n != LOCK_NAME]
        count += len(names)
        dirs += len(dirnames)
        for n in names:
            try:
                size += os.lstat(os.path.join(dirpath, n)).st_size
            except FileNotFoundError:
                pass
    return count, dirs, size


# -- status ------------------------------------------------------------------------------------
def test_status_during_catch_up_and_in_sync(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    for d in range(40):
        sub = src / f"d{d:02}"
        sub.mkdir()
        for i in range(150):
            (sub / f"f{i}").write_bytes(b"x" * (i % 17))
    # Copied 1 MiB per 50 ms (faults.py): the catch-up lasts at least 2 s after the watches are set.
    (src / "slow.bin").write_bytes(b"s" * (40 << 20))
    count, dirs, size = entries(src)
    spec["settle"] = "30s"  # below: a file written without close stays pending, so its lag can be seen
    cfg = write_config(tmp_path, [spec], control_socket=str(tmp_path / "ctl.sock"), metrics={"listen": "127.0.0.1:0"})
    before_start = time.time()
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "slow_copy:slow.bin"})
    wait_until(lambda: (tmp_path / "ctl.sock").exists(), 30, "control socket never appeared")
    early = live(tmp_path / "ctl.sock")
    # Read the target after the snapshot: what the daemon counted as done is there by then.
    in_target = entries(dst)[0] if dst.exists() else 0
    assert early["state"] == "catching_up", (early["problems"], early)
    assert early["files_mirrored"] <= in_target <= count, (early, in_target, count)
    assert early["catch_up"]["reason"] == "startup"
    # Progress counts up to the files to copy; the 40 directories are differences, not files.
    c = early["catch_up"]
    assert (c["to_copy"], c["differences"]) == ((count, count + dirs - 1) if c["walk_done"] else (0, 0)), (c, count, dirs)
    # The socket answers before the watches are set: until then they are not complete. Once
    # daemon_ready says they are, a folder still catching up has complete watches.
    d.wait_for("daemon_ready")
    mid = live(tmp_path / "ctl.sock")
    assert mid["state"] == "catching_up" and mid["catch_up"] is not None, mid
    assert mid["watches_complete"] is True, mid
    # The same catch-up in the metrics (the slow file keeps it going for a while yet).
    address = d.wait_for("metrics_listening")[0]["listen"]
    m = scrape(address)
    key = (("folder", "data"),)
    progress = {name: m[f"foldermirror_catchup_{name}"][key] for name in ("running", "comparing", "copied_files",
                                                                          "files_to_copy")}
    assert progress["running"] == 1 and 0 <= progress["copied_files"] <= count, progress
    # The comparison's count comes once it is done; walk_done is set before it.
    assert progress["files_to_copy"] == (0 if progress["comparing"] else count), progress
    assert "foldermirror_last_full_comparison_timestamp_seconds" not in m, "no comparison has ended yet"
    d.wait_ready()
    m = scrape(address)
    assert [m[f"foldermirror_catchup_{name}"][key] for name in ("running", "comparing", "copied_files",
                                                                  "files_to_copy")] == [0, 0, 0, 0], m
    ended = m["foldermirror_last_full_comparison_timestamp_seconds"][key]
    assert before_start < ended <= time.time(), (before_start, ended)
    snap = status(cfg)
    f = folder(snap, "data")
    assert f["state"] == "in_sync" and f["problems"] == [], f
    assert (f["files_mirrored"], f["bytes_mirrored"], f["watched_directories"]) == (count, size, dirs), \
        (f, count, size, dirs)
    assert (f["pending"], f["in_flight"], f["lag_s"], f["failed"], f["last_error"]) == (0, 0, 0, 0, None)
    assert f["watches_complete"] is True and f["catch_up"] is None
    assert snap["pid"] == d.proc.pid and snap["config"] == str(cfg)
    text = fm("status", "--config", str(cfg))
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.startswith("data "))
    assert row.split()[:3] == ["data", "in", "sync"] and f"{count:,}" in row and "complete" in row, text.stdout
    # A live change still being written (no close yet): pending, and the lag is its age.
    with open(src / "late.txt", "wb") as late:
        late.write(b"late")
        late.flush()
        sock = tmp_path / "ctl.sock"
        first = wait_until(lambda: (s := live(sock))["pending"] == 1 and s, 30, "not pending")
        second = wait_until(lambda: (s := live(sock))["lag_s"] > first["lag_s"] + 0.2 and s, 30, "no lag growth")
        assert second["state"] == "in_sync" and second["files_mirrored"] == count
        assert "late.txt" not in os.listdir(dst)
    wait_until(lambda: live(sock)["files_mirrored"] == count + 1, 30, "late.txt not counted")
    assert (dst / "late.txt").read_bytes() == b"late"
    assert d.stop() == 0
    assert not (tmp_path / "ctl.sock").exists(), "the socket is removed on a clean stop"


def test_status_shows_the_last_error_and_folds_repeats(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)  # delete: false: a file where the source has a folder stays, and fails
    dst.mkdir()
    for n in range(3):
        (src / f"sub{n}").mkdir()
        (src / f"sub{n}" / "f").write_bytes(b"x")
        (dst / f"sub{n}").write_bytes(b"a file where the source has a folder")
    (src / "fine").write_bytes(b"fine")
    cfg = write_config(tmp_path, [spec], control_socket=str(tmp_path / "ctl.sock"))
    d = daemon_factory(cfg)
    d.wait_ready()
    f = folder(status(cfg), "data")
    assert f["state"] == "degraded", f
    assert f["failed"] == 6 and f["failures"] == {"EEXIST": 6} and f["failing"] == 6, f
    e = f["last_error"]
    assert re.fullmatch(r"sub\d(/f)?", e["path"]) and "EEXIST" in e["error"] and e["errno"] == "EEXIST", e
    assert abs(time.mktime(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) < 120
    text = fm("status", "--config", str(cfg)).stdout
    assert f"data: last error {e['time']} {e['path']}: {e['error']}" in text, text
    assert "data: 6 paths failing" in text and "degraded" in text, text
    # One full line for the first failure, with its cause and fix; the other five are folded.
    failed = d.events("mirror_failed")
    assert len(failed) == 1, failed
    assert failed[0]["errno"] == "EEXIST" and "delete: true" in failed[0]["fix"] and failed[0]["folder"] == "data"
    assert d.stop() == 0
    folded = d.events("mirror_failed_repeated")
    assert len(folded) == 1 and folded[0]["count"] == 5, folded
    assert folded[0]["folder"] == "data" and folded[0]["fix"] == failed[0]["fix"] and folded[0]["paths"], folded


def test_status_without_a_daemon(tmp_path):
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec], control_socket=str(tmp_path / "ctl.sock"))
    r = fm("status", "--config", str(cfg))
    assert r.returncode == 3, r
    assert "no foldermirror daemon is running" in r.stderr and str(tmp_path / "ctl.sock") in r.stderr
    # A socket file left by a daemon that was killed: still "not running", not a hang or a traceback.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "ctl.sock"))
    stale.close()
    r = fm("status", "--config", str(cfg))
    assert r.returncode == 3 and "nobody listening" in r.stderr and "Traceback" not in r.stderr, r


# -- the control socket -------------------------------------------------------------------------
def test_default_sockets_keep_daemons_of_different_configs_apart(tmp_path, daemon_factory):
    daemons = {}
    for name in ("one", "two"):
        base = tmp_path / name
        base.mkdir()
        src, dst, spec = pair(base, name)
        cfg = write_config(base, [spec])  # no control_socket: the default location
        daemons[name] = (cfg, daemon_factory(cfg))
    for name, (cfg, d) in daemons.items():
        d.wait_ready()
        where = d.wait_for("control_socket_listening")[0]["path"]
        assert os.path.basename(where).startswith("control-"), where
        snap = status(cfg)
        assert snap["pid"] == d.proc.pid and [f["name"] for f in snap["folders"]] == [name], snap
    for _cfg, d in daemons.values():
        assert d.stop() == 0
        assert d.events("control_socket_unavailable") == []


def test_control_socket_answers_only_status_and_rescan(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    sock = tmp_path / "ctl.sock"
    cfg = write_config(tmp_path, [spec], control_socket=str(sock))
    d = daemon_factory(cfg)
    d.wait_ready()
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    for payload in (b'{"request": "read", "path": "/etc/passwd"}\n', b'{"request": "shutdown"}\n'):
        reply = ask(sock, payload)
        assert reply["ok"] is False and "only rescan and status" in reply["error"], reply
        assert "root:" not in json.dumps(reply)
    assert ask(sock, b"GET / HTTP/1.0\r\n\r\n")["ok"] is False
    assert ask(sock, b'["status"]\n')["ok"] is False
    assert "too long" in ask(sock, b'{"request": "' + b"a" * 10000 + b'"}\n')["error"]
    # A client that connects and says nothing does not stop the next one from being answered.
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(str(sock))
    started = time.monotonic()
    assert ask(sock, b'{"request": "status"}\n')["ok"] is True
    assert time.monotonic() - started < 10
    stuck.close()
    assert "no folder named" in ask(sock, b'{"request": "rescan", "folder": "nope"}\n')["error"]
    (src / "quiet").write_bytes(b"q")
    wait_mirrored(src, dst, delete=False)
    os.unlink(dst / "quiet")  # behind the daemon's back: no event, only a comparison notices
    r = fm("rescan", "--config", str(cfg), "--folder", "data")
    assert r.returncode == 0 and "rescan requested: data" in r.stdout, r
    d.wait_for("sync_finished", reason="requested")
    assert (dst / "quiet").read_bytes() == b"q"
    assert d.stop() == 0


# -- metrics -----------------------------------------------------------------------------------
def test_metrics_are_scraped_and_match_what_was_mirrored(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    bsrc, bdst, bspec = pair(tmp_path, "bad")
    (bsrc / "sub").mkdir()
    bdst.mkdir()
    (bdst / "sub").write_bytes(b"conflict")
    cfg = write_config(tmp_path, [spec, bspec], control_socket=str(tmp_path / "ctl.sock"),
                       metrics={"listen": "127.0.0.1:0"})
    before_start = time.time()
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "max_user_watches:54321"})
    d.wait_ready()
    address = d.wait_for("metrics_listening")[0]["listen"]
    assert address.startswith("127.0.0.1:")
    sizes = [0, 1, 100, 5000, 70000]
    for i, n in enumerate(sizes):
        (src / f"f{i}").write_bytes(os.urandom(n))
    (src / "dir").mkdir()
    wait_mirrored(src, dst)
    os.unlink(src / "f0")
    wait_mirrored(src, dst)
    key = (("folder", "data"),)
    want = (len(sizes), 1, len(sizes) + 2, 0, 0)
    seen: list[tuple[Any, ...]] = []

    def settled() -> dict[str, Any] | None:
        # A scrape is not one snapshot: the counters and the latency histogram of the last
        # outcome are updated one after the other, and its path leaves flight after them.
        m = scrape(address)
        done = (m["foldermirror_mirrored_files_total"].get(key), m["foldermirror_deletions_total"].get(key),
                m["foldermirror_mirror_latency_seconds_count"].get(key), m["foldermirror_pending_paths"].get(key),
                m["foldermirror_in_flight_paths"].get(key))
        seen[:] = [done]
        return m if done == want else None
    m = wait_until(settled, 30, lambda: f"(files, deletions, latencies, pending, in flight) stayed at {seen}, "
                                        f"not {want}")
    assert m["foldermirror_mirrored_bytes_total"][key] == sum(sizes)
    # Latency is observed for every path done: the files, the directory and the deletion.
    assert m["foldermirror_mirror_latency_seconds_count"][key] == len(sizes) + 2
    assert m["foldermirror_mirror_latency_seconds_bucket"][(("folder", "data"), ("le", "+Inf"))] == len(sizes) + 2
    assert m["foldermirror_pending_paths"][key] == 0 and m["foldermirror_in_flight_paths"][key] == 0
    assert m["foldermirror_lag_seconds"][key] == 0
    assert m["foldermirror_watched_directories"][key] == 1  # the walk at start saw only the root
    assert m["foldermirror_inotify_max_user_watches"][()] == 54321  # the fault stands in for the sysctl
    assert m["foldermirror_worker_restarts_total"][()] == 0 and m["foldermirror_overflow_rescans_total"][()] == 0
    bad = (("folder", "bad"),)
    assert m["foldermirror_failures_total"][(("errno", "EEXIST"), ("folder", "bad"))] >= 1
    # "sub" fails for good (a file in the target where the source has a folder): one path failing now.
    assert (m["foldermirror_failing_paths"][bad], m["foldermirror_failing_paths"][key]) == (1, 0)
    assert m["foldermirror_build_info"] == {(("version", foldermirror.__version__),): 1}
    # Both start-up catch-ups ended (wait_ready saw their sync_finished), the failing path notwithstanding.
    for k in (key, bad):
        assert before_start < m["foldermirror_last_full_comparison_timestamp_seconds"][k] <= time.time()
    # process_start_time_seconds is counted from the boot time, which the kernel gives in whole seconds.
    assert before_start - 2 < m["process_start_time_seconds"][()] <= time.time()
    assert m["process_resident_memory_bytes"][()] > 0
    assert m["foldermirror_folder_state"][(("folder", "bad"), ("state", "degraded"))] == 1
    assert m["foldermirror_folder_state"][(("folder", "data"), ("state", "in_sync"))] == 1
    assert d.stop() == 0


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_finds_nothing_to_lint_in_a_scrape(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    dst.mkdir()
    (src / "sub").mkdir()
    (dst / "sub").write_bytes(b"a file where the source has a folder")  # delete: false: fails, with an errno
    (src / "f").write_bytes(b"f")
    cfg = write_config(tmp_path, [spec], metrics={"listen": "127.0.0.1:0"})
    d = daemon_factory(cfg)
    address = d.wait_for("metrics_listening")[0]["listen"]
    # Every family with samples, the latency histogram and a failure's errno label included.
    def complete() -> str | None:
        text = scrape_text(address)
        return text if 'errno="EEXIST"' in text and "_bucket{" in text else None
    text = wait_until(complete, 30, lambda: f"no failure or latency in:\n{scrape_text(address)}")
    assert promtool_problems(text) == "", text
    assert d.stop() == 0


# -- dry run -----------------------------------------------------------------------------------
def test_sync_dry_run_lists_exactly_the_difference_and_changes_nothing(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True)
    kept_src, kept_dst, kept_spec = pair(tmp_path, "kept")  # delete: false
    for root in (src, dst, kept_src, kept_dst):
        root.mkdir(exist_ok=True)
        (root / "same").write_bytes(b"same")
        os.utime(root / "same", ns=(10**18, 10**18))
        (root / "sub").mkdir()
    (src / "new file").write_bytes(b"new")
    (src / "sub" / "nested").write_bytes(b"nested")
    (src / "changed").write_bytes(b"version 2")
    (dst / "changed").write_bytes(b"version 1")
    (dst / "gone").write_bytes(b"only in the target")
    (dst / "olddir" / "inner").mkdir(parents=True)
    (dst / ".foldermirror-deadbeef-1-abcdef.tmp").write_bytes(b"stale")
    os.mkfifo(src / "pipe")
    (kept_dst / "extra").write_bytes(b"kept")
    (kept_src / "sub" / "x").write_bytes(b"x")
    before = (snapshot(src), snapshot(dst), snapshot(kept_src), snapshot(kept_dst))
    cfg = write_config(tmp_path, [spec, kept_spec])
    r = fm("sync", "--dry-run", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert (snapshot(src), snapshot(dst), snapshot(kept_src), snapshot(kept_dst)) == before
    action = re.compile(r"^  (copy|replace|update|conflict|delete|keep|skip) +(.+?)(  \(.*\))?$")
    sections = {s.splitlines()[0].split(":")[0]: s.splitlines()[1:] for s in r.stdout.split("\n\n")}
    actions = {name: [m.group(1, 2) for ln in body if (m := action.match(ln))] for name, body in sections.items()}
    assert actions["folder data"] == [("replace", "changed"), ("delete", "gone"), ("copy", "new file"),
                                      ("delete", "olddir"), ("skip", "pipe"), ("copy", "sub/nested")], r.stdout
    assert "  2 to copy, 1 to replace, 2 to delete, 1 skipped" in sections["folder data"], r.stdout
    assert "  stale temp files: 1 (removed by the catch-up)" in sections["folder data"], r.stdout
    assert actions["folder kept"] == [("keep", "extra"), ("copy", "sub/x")], r.stdout
    assert "total: 3 to copy, 1 to replace, 2 to delete, 1 kept (delete: false), 1 skipped" in r.stdout
    assert "Renames cannot be known offline" in r.stdout and "nothing was changed" in r.stdout


# -- logs ---------------------------------------------------------------------------------------
def test_debug_trace_follows_one_file_through_the_pipeline(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec], log={"level": "debug", "trace": "watch-me*"},
                       control_socket=str(tmp_path / "ctl.sock"))
    d = daemon_factory(cfg)
    d.wait_ready()
    for i in range(20):
        (src / f"other{i}").write_bytes(b"o")
    (src / "watch-me.txt").write_bytes(b"followed")
    wait_mirrored(src, dst, delete=False)
    steps = d.wait_for("pipeline_step", stage="done", path="watch-me.txt")
    assert steps[0]["status"] == "copied"
    traced = d.events("pipeline_step")
    assert {r["path"] for r in traced} == {"watch-me.txt"}, traced
    assert [r["stage"] for r in traced] == ["event", "ready", "dispatched", "done"], traced
    assert all(r["level"] == "debug" and r["folder"] == "data" and "since_ms" in r for r in traced)
    assert d.stop() == 0


@pytest.mark.parametrize("command", ["status", "rescan"])
def test_new_commands_explain_themselves(command):
    r = fm(command, "--help")
    assert r.returncode == 0 and "--config" in r.stdout, r.stdout
    assert "3 when no daemon is running" in " ".join(r.stdout.split()), r.stdout
