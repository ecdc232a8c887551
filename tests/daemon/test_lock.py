"""One daemon per target: the target lock, its reserved name, and two daemons (or a sync) meeting."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from foldermirror import targetlock
from foldermirror.targetlock import TargetLocked
from foldermirror.tempnames import RESERVED_REASON
from helpers import LOCK_NAME, children, fm, lock_holder, pair, wait_mirrored, wait_until, write_config


def refusal(target: Path, pid: int, config: Path) -> str:
    return f"{target} is already mirrored by pid {pid} ({config})"


def lock_fd_holders(pid: int, lock: Path) -> list[int]:
    """The process `pid` and its descendants that have `lock` open."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        todo.extend(children(p))
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") == str(lock):
                    out.append(p)
            except OSError:
                pass
    return out


# -- daemons meeting at a target ------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_a_second_daemon_on_the_same_config_exits_naming_the_holder(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec])
    first = daemon_factory(cfg)
    first.wait_ready()
    assert lock_holder(dst) == {"pid": first.proc.pid, "config": str(cfg)}
    # the workers come from the fork server: none of them, nor it, has the lock file open
    wait_until(lambda: first.worker_pids(), 10, "no workers")
    assert lock_fd_holders(first.proc.pid, dst / LOCK_NAME) == [first.proc.pid]

    second = daemon_factory(cfg)
    rc = second.proc.wait(60)
    second.stop()
    assert rc == 1, second.tail()
    message = refusal(dst, first.proc.pid, cfg)
    assert f"foldermirror: error: {message}" in second.other_lines, second.tail()
    (line,) = second.events("folder_unusable", folder="data")
    assert line["error"] == message and f"pid {first.proc.pid}" in line["fix"], line
    assert not second.events("daemon_ready") and not second.events("file_mirrored")

    (src / "after.txt").write_text("the first one still mirrors")
    wait_mirrored(src, dst)
    assert lock_holder(dst) == {"pid": first.proc.pid, "config": str(cfg)}
    assert first.stop() == 0
    assert lock_holder(dst)["pid"] == first.proc.pid  # the file stays; its flock went with the process
    targetlock.acquire(str(dst), "/after.yaml").release()


@pytest.mark.timeout(90)
def test_another_config_naming_the_same_target_is_refused(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec])
    first = daemon_factory(cfg)
    first.wait_ready()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_src = other_dir / "src"
    other_src.mkdir()
    (other_src / "intruder.txt").write_text("must not land in the first one's target")
    other_cfg = write_config(other_dir, [{"name": "copy", "source": str(other_src), "target": str(dst)}])
    second = daemon_factory(other_cfg)
    assert second.proc.wait(60) == 1, second.tail()
    second.stop()
    assert f"foldermirror: error: {refusal(dst, first.proc.pid, cfg)}" in second.other_lines, second.tail()
    assert not (dst / "intruder.txt").exists()
    assert first.stop() == 0


@pytest.mark.timeout(90)
def test_sync_beside_a_running_daemon_refuses(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec])
    d = daemon_factory(cfg)
    d.wait_ready()
    r = fm("sync", "--config", str(cfg))
    assert r.returncode == 1, r
    assert f"foldermirror: error: {refusal(dst, d.proc.pid, cfg)}" in r.stderr.splitlines(), r.stderr
    assert '"file_mirrored"' not in r.stderr and '"folder_unusable"' in r.stderr
    assert d.proc.poll() is None
    assert d.stop() == 0
    r = fm("sync", "--config", str(cfg))  # the lock went with the daemon
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(120)
def test_a_daemon_serves_the_folders_whose_targets_are_free_and_takes_the_rest_on_reload(
        tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, "shared")
    first = daemon_factory(write_config(tmp_path, [spec]))
    first.wait_ready()
    other_dir = tmp_path / "second"
    other_dir.mkdir()
    own_src, own_dst, own = pair(other_dir, "own")
    mine_src, _, mine = pair(other_dir, "mine")
    mine["target"] = str(dst)                     # the first daemon's target
    (mine_src / "mine.txt").write_text("waits for the target")
    cfg = write_config(other_dir, [mine, own])
    second = daemon_factory(cfg)
    second.wait_for("daemon_ready", unusable=["mine"])
    (line,) = second.events("folder_unusable", folder="mine")
    assert line["error"] == refusal(dst, first.proc.pid, tmp_path / "config.yaml") and line["fix"], line
    (own_src / "own.txt").write_text("served")
    wait_mirrored(own_src, own_dst)
    assert not (dst / "mine.txt").exists()
    assert lock_holder(own_dst)["pid"] == second.proc.pid

    assert first.stop() == 0
    second.send(signal.SIGHUP)                    # an unusable folder is tried again on reload
    second.wait_for("config_reloaded")
    assert "unusable" not in second.events("config_reloaded")[-1]
    wait_until(lambda: (dst / "mine.txt").exists(), 30, lambda: second.tail())
    assert lock_holder(dst) == {"pid": second.proc.pid, "config": str(cfg)}
    assert second.stop() == 0


@pytest.mark.timeout(120)
def test_reload_adding_a_locked_target_leaves_it_unusable_and_moves_locks_with_the_config(
        tmp_path, daemon_factory):
    held_src, held_dst, held = pair(tmp_path, "held")
    first = daemon_factory(write_config(tmp_path, [held]))
    first.wait_ready()
    other_dir = tmp_path / "second"
    other_dir.mkdir()
    a_src, a_dst, a = pair(other_dir, "a")
    b_src, b_dst, b = pair(other_dir, "b")
    c_src, c_dst, c = pair(other_dir, "c")
    cfg = write_config(other_dir, [a, b, c])
    d = daemon_factory(cfg)
    d.wait_ready()
    for target in (a_dst, b_dst, c_dst):
        assert lock_holder(target)["pid"] == d.proc.pid

    # add a folder whose target the first daemon holds; change b's target; remove nothing yet
    new_b_dst = other_dir / "b-dst-2"
    late = {"name": "late", "source": str(held_src), "target": str(held_dst)}
    write_config(other_dir, [a, {**b, "target": str(new_b_dst)}, c, late])
    d.send(signal.SIGHUP)
    reloaded = d.wait_for("config_reloaded")[0]
    assert reloaded["unusable"] == ["late"] and reloaded["changed"] == ["b"], reloaded
    (line,) = d.events("folder_unusable", folder="late")
    assert line["error"] == refusal(held_dst, first.proc.pid, tmp_path / "config.yaml"), line
    assert lock_holder(held_dst)["pid"] == first.proc.pid
    targetlock.acquire(str(b_dst), "/test.yaml").release()          # the old target was let go
    with pytest.raises(TargetLocked) as caught:                      # the new one is held
        targetlock.acquire(str(new_b_dst), "/test.yaml")
    assert caught.value.pid == d.proc.pid
    (a_src / "goes-on.txt").write_text("a")
    (b_src / "goes-on.txt").write_text("b")
    wait_mirrored(a_src, a_dst)
    wait_mirrored(b_src, new_b_dst)

    # b and c removed, a moved onto b's target in the same reload: removed folders let go
    # first, so a can take it
    write_config(other_dir, [{**a, "target": str(new_b_dst)}])
    d.send(signal.SIGHUP)
    reloaded = d.wait_for("config_reloaded", count=2)[1]
    got = (sorted(reloaded["removed"]), reloaded["changed"], reloaded.get("unusable"))
    assert got == (["b", "c"], ["a"], None), reloaded
    for target in (a_dst, c_dst):
        targetlock.acquire(str(target), "/test.yaml").release()
    (a_src / "moved.txt").write_text("into b's old target")
    wait_mirrored(a_src, new_b_dst, delete=False)
    assert lock_holder(new_b_dst)["pid"] == d.proc.pid
    assert d.stop() == 0
    targetlock.acquire(str(new_b_dst), "/test.yaml").release()      # shutdown released the rest
    assert first.stop() == 0


@pytest.mark.timeout(90)
def test_delete_true_keeps_the_lock_file_and_dry_run_never_lists_it(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    dst.mkdir()
    for i in range(3):
        (dst / f"extra{i}").write_text("goes")
    (src / "kept.txt").write_text("k")
    cfg = write_config(tmp_path, [spec])
    d = daemon_factory(cfg)
    d.wait_ready()
    d.wait_for("file_deleted", count=3)
    wait_mirrored(src, dst)
    assert lock_holder(dst)["pid"] == d.proc.pid
    r = fm("rescan", "--config", str(cfg))  # a whole comparison again: the lock file is still no extra
    assert r.returncode == 0, r.stderr
    d.wait_for("sync_finished", reason="requested")
    assert not d.events("file_deleted", path=LOCK_NAME) and (dst / LOCK_NAME).exists()
    (dst / "stray").write_text("s")
    r = fm("sync", "--dry-run", "--config", str(cfg))  # read-only: allowed beside the daemon
    assert r.returncode == 0, r.stderr
    assert "delete  stray  (file)" in r.stdout and LOCK_NAME not in r.stdout, r.stdout
    assert d.stop() == 0
    r = fm("sync", "--dry-run", "--config", str(cfg))
    assert "1 to delete" in r.stdout and LOCK_NAME not in r.stdout, r.stdout


@pytest.mark.timeout(90)
def test_a_source_file_with_the_reserved_name_is_skipped_with_a_warning(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    (src / LOCK_NAME).write_text("a user's file that happens to have this name")
    (src / "ordinary.txt").write_text("o")
    cfg = write_config(tmp_path, [spec])
    d = daemon_factory(cfg)
    d.wait_ready()
    skipped = d.wait_for("file_skipped", path=LOCK_NAME)[0]
    assert skipped["error"] == RESERVED_REASON and "rename" in skipped["fix"], skipped
    wait_mirrored(src, dst)  # the oracle leaves the reserved name out on both sides
    assert lock_holder(dst)["pid"] == d.proc.pid
    (src / LOCK_NAME).write_text("rewritten: still not copied")
    (src / LOCK_NAME).unlink()  # with delete: true, its deletion does not reach ours either
    (src / "after.txt").write_text("a")
    wait_mirrored(src, dst)
    assert lock_holder(dst)["pid"] == d.proc.pid
    assert d.stop() == 0
    (src / LOCK_NAME).write_text("back")
    r = fm("sync", "--dry-run", "--config", str(cfg))
    assert f"skip  {LOCK_NAME}  (file, {RESERVED_REASON})" in r.stdout, r.stdout


@pytest.mark.timeout(90)
def test_a_control_socket_held_by_another_daemon_says_so(tmp_path, daemon_factory):
    sock = tmp_path / "ctl.sock"
    a_src, a_dst, a = pair(tmp_path, "a")
    first = daemon_factory(write_config(tmp_path, [a], control_socket=str(sock)))
    first.wait_ready()
    first.wait_for("control_socket_listening")
    other = tmp_path / "other"
    other.mkdir()
    b_src, b_dst, b = pair(other, "b")
    second = daemon_factory(write_config(other, [b], control_socket=str(sock)))
    second.wait_ready()
    (line,) = second.events("control_socket_unavailable")
    assert f"pid {first.proc.pid}" in line["error"], line
    assert "another foldermirror listens there" in line["fix"] and "ReadWritePaths" not in line["fix"], line
    assert "folder the service user can write" not in line["fix"], line
    (b_src / "x").write_text("x")
    wait_mirrored(b_src, b_dst)
    assert second.stop() == 0 and first.stop() == 0
