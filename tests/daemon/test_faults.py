"""Nothing lost under faults (issue 4): every case ends with target == source, no temp
files, and a daemon that is alive and still mirroring a file written afterwards.

Some cases need root (mounts, a daemon without DAC capabilities); they skip with the
reason elsewhere. Test-only fault injection (FOLDERMIRROR_FAULTS, see faults.py) makes
the "during a copy" windows deterministic: `slow_copy:NAME` copies NAME 1 MiB per 50 ms.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from foldermirror import tempnames
from foldermirror.pipeline.pool import process_alive
from helpers import (
    IS_ROOT,
    LOCK_NAME,
    TEMP_MARK,
    descendants,
    never_within,
    pair,
    setpriv_or_skip,
    snapshot,
    still_mirroring,
    temps,
    wait_mirrored,
    wait_until,
    write_config,
)

MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------------

def pattern(tag: bytes, size: int) -> bytes:
    block = hashlib.sha256(tag).digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


def wait_for_temp(dst: Path, timeout: float = 30) -> str:
    return wait_until(lambda: (t := temps(dst)) and t[0], timeout, "no copy in progress (no temp file)")


def mount(*args: str) -> None:
    if not IS_ROOT:
        pytest.skip("needs root to mount")
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True, capture_output=True)


def mounted(where: Path) -> bool:
    """os.path.ismount misses a bind mount from the same file system: ask the kernel."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(where) for line in f)


@contextmanager
def cleanup_mounts(*points: Path) -> Iterator[None]:
    try:
        yield
    finally:
        for p in points:
            for _ in range(10):
                if not mounted(p):
                    break
                subprocess.run(["umount", "-l", str(p)], capture_output=True)


def rescans(d: Any) -> int:
    return len(d.events("sync_finished", reason="rescan"))


# -- 1. inotify overflow ---------------------------------------------------------------

@pytest.mark.slow  # 20 s on 2 cores
@pytest.mark.timeout(150)
def test_inotify_overflow_is_noticed_and_reconciled(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0))
    d.wait_ready()
    dirs = [os.path.join(src, f"d{i:02}") for i in range(20)]
    for sub in dirs:
        os.mkdir(sub)
    wait_mirrored(src, dst)  # each folder is watched once its mirror exists
    # 40,000 files, three events each, written as fast as one process can. While the writer
    # runs the daemon is stopped, so the kernel's default 16,384-event queue overflows every
    # time instead of only when the writer happens to outrun the observer thread.
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        data = b"x" * 100
        for i in range(40_000):
            fd = os.open(os.path.join(dirs[i % 20], f"f{i:05}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
        os.mkdir(src / "made-during-the-overflow")
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    d.wait_for("overflow_rescan", timeout=30)
    d.wait_for("sync_finished", reason="overflow", timeout=120)
    wait_mirrored(src, dst, timeout=60)
    # The watches below the root were rebuilt: a new file in a folder made during the
    # overflow comes through an event (no rescan is configured).
    still_mirroring(d, src, dst, sub="made-during-the-overflow")


@pytest.mark.slow  # 40 s on 2 cores
@pytest.mark.timeout(300)
def test_an_overflow_in_a_tree_of_more_directories_than_the_queue_holds_is_over_after_one_comparison(
        tmp_path, daemon_factory):
    # watchdog's own answer to an overflow removes every watch and adds it again; each removal
    # queues an event, so with more directories than the kernel's queue holds (16,384 by
    # default) that answer overflowed the queue again, for ever, and every overflow was a
    # comparison of every folder.
    src, dst, spec = pair(tmp_path, delete=True)
    dirs = [src / f"d{i // 100:03}" / f"s{i % 100:02}" for i in range(20_000)]
    for sub in dirs:
        sub.mkdir(parents=True)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0))
    d.wait_for("sync_finished", reason="startup", timeout=180)
    os.kill(d.proc.pid, signal.SIGSTOP)  # the writer outruns a stopped daemon every time
    try:
        for sub in dirs:
            fd = os.open(sub / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    d.wait_for("overflow_rescan", timeout=60)
    d.wait_for("sync_finished", reason="overflow", timeout=180)
    wait_mirrored(src, dst, timeout=120)
    overflows = len(d.events("overflow_rescan"))
    never_within(lambda: len(d.events("overflow_rescan")) > overflows, 5,
                 lambda: f"{len(d.events('overflow_rescan'))} overflows and counting:\n{d.tail()}")
    still_mirroring(d, src, dst, sub="d123/s45")  # the watches are there: events still come


# -- 2. periodic rescan ----------------------------------------------------------------

def test_periodic_rescan_catches_an_eventless_change_and_is_cheap(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(500):
        (src / f"f{i:03}").write_bytes(b"%d" % i)
    (src / "doc.txt").write_bytes(b"version 1")
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval="1s"))
    d.wait_ready()
    wait_mirrored(src, dst)
    # A rescan with nothing to do copies nothing and stays cheap.
    n = rescans(d)
    quiet = d.wait_for("sync_finished", reason="rescan", count=n + 2)[-1]
    copies = len(d.events("file_mirrored"))
    assert quiet["files_mirrored"] == 0 and quiet["differences"] == 0 and quiet["failed"] == 0, quiet
    assert quiet["elapsed_s"] < 5, quiet
    # A write through a hard link outside the source produces no event in the watched
    # folder (inotify reports to the parent of the name that was opened); only the
    # periodic comparison can find it.
    alias = tmp_path / "alias-outside"
    os.link(src / "doc.txt", alias)
    with open(alias, "r+b") as f:
        f.write(b"version 2, written where no watch sees it")
    wait_mirrored(src, dst)
    wait_until(lambda: [r for r in d.events("sync_finished", reason="rescan") if r["files_mirrored"] == 1], 10,
               "the change was not found by a rescan")
    assert len(d.events("file_mirrored")) == copies + 1
    still_mirroring(d, src, dst)


# -- 3. workers killed -------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_workers_killed_repeatedly_during_a_burst(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec], workers=2, rescan_interval=0))
    d.wait_ready()
    killed: set[int] = set()
    for round in range(5):  # a worker killed while the burst is being copied, five times over
        wait_until(lambda: len(set(d.worker_pids()) - killed) == 2, 30,
                   lambda: f"pool not back: workers {d.worker_pids()}, killed {killed}, "
                           f"children {descendants(d.proc.pid)}:\n{d.tail()}")
        sub = src / f"d{round}"
        sub.mkdir()
        for i in range(600):
            (sub / f"f{i:03}").write_bytes(os.urandom(8_000))
        victim = random.choice(sorted(set(d.worker_pids()) - killed))
        killed.add(victim)
        os.kill(victim, signal.SIGKILL)
    assert killed
    wait_mirrored(src, dst, timeout=60)
    lost = d.wait_for("worker_lost")
    # Both idle workers at once (an idle worker killed while it holds the task queue's lock wedges a Pool).
    both = set(d.worker_pids()) - killed
    for pid in both:
        os.kill(pid, signal.SIGKILL)
    killed |= both
    d.wait_for("worker_lost", count=len(lost) + 1)
    # back to full size, old workers gone
    wait_until(lambda: len(d.worker_pids()) == 2 and not set(d.worker_pids()) & killed, 30,
               lambda: f"workers {d.worker_pids()}")
    still_mirroring(d, src, dst)
    tree = descendants(d.proc.pid)
    started = time.monotonic()
    assert d.stop(timeout=30) == 0
    assert time.monotonic() - started < 15, "shutdown after lost workers took too long"
    wait_until(lambda: not any(process_alive(p) for p in tree), 10, "processes left after stop")


@pytest.mark.timeout(120)
def test_a_worker_killed_before_its_hello_was_read_is_noticed(tmp_path, daemon_factory):
    """A worker can die before the daemon heard it start (its hello still in its own buffer).
    The Pool replaces it without a word and the batch it held would never end: the daemon
    must notice the replacement itself. With no hello at all, that is the only sign."""
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec], workers=2, rescan_interval=0),
                       env={"FOLDERMIRROR_FAULTS": "no_hello:on,slow_copy:slow.bin"})
    d.wait_ready()
    wait_until(lambda: len(d.worker_pids()) == 2, 30, lambda: f"workers {d.worker_pids()}")
    (src / "slow.bin").write_bytes(os.urandom(6 << 20))  # 300 ms of copy: a worker is busy with it
    for i in range(200):
        (src / f"f{i:03}").write_bytes(os.urandom(4_000))
    busy = wait_for_temp(dst)
    writer = tempnames.temp_owner(os.path.basename(busy))[1]
    os.kill(writer, signal.SIGKILL)
    lost = d.wait_for("worker_lost", timeout=30)[0]
    assert lost["resubmitted"] >= 1, lost
    wait_mirrored(src, dst, timeout=60)
    still_mirroring(d, src, dst)
    assert d.stop() == 0


# -- 4. main process killed ------------------------------------------------------------------

def test_daemon_sigkilled_during_a_big_copy_takes_its_workers_along(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "slow_copy:big.bin"})
    d.wait_ready()
    (src / "small").write_bytes(b"small")
    (src / "big.bin").write_bytes(pattern(b"big", 48 * MiB))  # 2.4 s to copy
    wait_for_temp(dst)
    tree = descendants(d.proc.pid)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    # An orphaned worker must not finish its copy and publish it behind the back of the
    # next daemon: it stops (and removes its temp file) when the daemon is gone.
    wait_until(lambda: not any(process_alive(p) for p in tree), 15,
               lambda: f"left behind: {[p for p in tree if process_alive(p)]}")
    assert not (dst / "big.bin").exists(), "an orphaned worker published its copy"
    assert not temps(dst)
    d2 = daemon_factory(cfg)
    d2.wait_ready()
    wait_mirrored(src, dst)
    still_mirroring(d2, src, dst)
    assert d2.stop() == 0


def test_whole_daemon_killed_leaves_a_temp_file_that_restart_removes(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "slow_copy:big.bin"})
    d.wait_ready()
    (src / "sub").mkdir()
    (src / "sub" / "big.bin").write_bytes(pattern(b"big", 24 * MiB))
    wait_for_temp(dst)
    # Like a power cut: nothing of the daemon gets to clean up (freeze all, then kill all).
    tree = [d.proc.pid] + descendants(d.proc.pid)
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    d.proc.wait()
    left = temps(dst)
    assert left, "the kill left no temp file: the test did not catch a copy in flight"
    assert not (dst / "sub" / "big.bin").exists()
    d2 = daemon_factory(cfg)
    d2.wait_ready()
    d2.wait_for("stale_temps_removed")
    wait_mirrored(src, dst)
    still_mirroring(d2, src, dst)


# -- 5. file changed during its copy ------------------------------------------------------------

@pytest.mark.parametrize("change", ["appended", "truncated", "replaced", "deleted", "rewritten_mtime_kept"])
def test_file_changed_during_its_copy_never_publishes_a_mix(tmp_path, daemon_factory, change):
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0), "--log-level", "debug",
                       env={"FOLDERMIRROR_FAULTS": "slow_copy:big.bin"})
    d.wait_ready()
    v1 = pattern(b"v1", 8 * MiB)
    v2 = {"appended": v1 + pattern(b"tail", MiB), "truncated": v1[:MiB], "replaced": pattern(b"v2", 8 * MiB),
          "deleted": None, "rewritten_mtime_kept": pattern(b"v2", 8 * MiB)}[change]
    allowed = [v1] + ([v2] if v2 is not None else [])
    bad: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # everything ever visible at the real name is one whole version
        while not stop.is_set():
            try:
                data = (dst / "big.bin").read_bytes()
            except FileNotFoundError:
                continue
            if data not in allowed:
                bad.append(f"{len(data)} bytes")

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        (src / "big.bin").write_bytes(v1)
        wait_for_temp(dst)
        if change == "appended":
            with open(src / "big.bin", "ab") as f:
                f.write(pattern(b"tail", MiB))
        elif change == "truncated":
            os.truncate(src / "big.bin", MiB)
        elif change == "replaced":
            (src / "big.bin.new").write_bytes(v2)
            os.replace(src / "big.bin.new", src / "big.bin")
        elif change == "deleted":
            (src / "big.bin").unlink()
        else:  # same size, in place, and the old mtime put back (as `touch -r` or `cp -p` would)
            st = os.stat(src / "big.bin")
            with open(src / "big.bin", "r+b") as f:
                f.write(v2)
            os.utime(src / "big.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
        d.wait_for("file_changed_during_copy", path="big.bin")
        wait_mirrored(src, dst)
    finally:
        stop.set()
        reader.join()
    assert not bad, f"a mixed version was visible in the target: {bad[:3]}"
    assert (dst / "big.bin").exists() == (change != "deleted")
    still_mirroring(d, src, dst)


# -- 6. the watched folder vanishes -------------------------------------------------------------

def make_tree(root: Path, dirs: int = 3, files: int = 10) -> None:
    for i in range(dirs):
        (root / f"d{i}").mkdir(parents=True, exist_ok=True)
        for j in range(files):
            (root / f"d{i}" / f"f{j}").write_bytes(b"%d/%d " % (i, j) * (j + 1))


def test_watched_folder_deleted_and_recreated(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    make_tree(src)
    backup = tmp_path / "backup"
    shutil.copytree(src, backup)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0))
    d.wait_ready()
    wait_mirrored(src, dst)
    shutil.rmtree(src)
    d.wait_for("source_missing")
    # restored from a backup, with a few changes
    shutil.copytree(backup, src)
    (src / "d0" / "f0").write_bytes(b"changed after the restore")
    (src / "d1" / "f1").unlink()
    (src / "new").write_bytes(b"new after the restore")
    d.wait_for("source_restored")
    wait_mirrored(src, dst)
    assert not d.events("mirror_failed"), d.events("mirror_failed")
    still_mirroring(d, src, dst, sub="d2")


def test_watched_folder_renamed_away_and_back_then_replaced(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    make_tree(src)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval="1s"), "--log-level", "debug")
    d.wait_ready()
    wait_mirrored(src, dst)
    before = snapshot(dst)
    away = tmp_path / "away"
    os.rename(src, away)
    d.wait_for("source_missing")
    # Its old watches report these under the old path ("ghost" events): nothing may be
    # done to the target while the folder is away, and no rescan deletes anything.
    (away / "d0" / "f0").unlink()
    (away / "written-while-away").write_bytes(b"away")
    d.wait_for("file_set_aside", path="d0/f0")
    n = rescans(d)
    d.wait_for("sync_finished", reason="rescan", count=n + 2)
    assert snapshot(dst) == before
    os.rename(away, src)
    d.wait_for("source_restored", same_folder=True)
    wait_mirrored(src, dst)
    # Renamed away again, and a new folder made at the path.
    os.rename(src, tmp_path / "old")
    shutil.copytree(tmp_path / "old", src)
    (src / "only-in-the-new-one").write_bytes(b"new")
    d.wait_for("source_restored", same_folder=False)
    wait_mirrored(src, dst)
    still_mirroring(d, src, dst, sub="d1")


def test_parent_of_watched_folder_unmounted_and_mounted_again(tmp_path, daemon_factory):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    (store / "src").mkdir(parents=True)
    mnt.mkdir()
    with cleanup_mounts(mnt):
        mount("--bind", str(store), str(mnt))
        src, dst = mnt / "src", tmp_path / "dst"
        make_tree(src)
        spec = {"name": "data", "source": str(src), "target": str(dst), "delete": True}
        d = daemon_factory(write_config(tmp_path, [spec], rescan_interval="1s"))
        d.wait_ready()
        wait_mirrored(src, dst)
        before = snapshot(dst)
        umount(mnt)
        d.wait_for("source_missing")
        n = rescans(d)
        d.wait_for("sync_finished", reason="rescan", count=n + 2)
        assert snapshot(dst) == before, "files were deleted while the source was unmounted"
        (store / "src" / "written-while-unmounted").write_bytes(b"hidden")
        mount("--bind", str(store), str(mnt))
        d.wait_for("source_restored")
        wait_mirrored(src, dst)
        still_mirroring(d, src, dst)
        assert d.stop() == 0


def test_parent_of_watched_folder_made_unreadable(tmp_path, daemon_factory):
    wrapper = setpriv_or_skip()
    parent = tmp_path / "parent"
    src, dst = parent / "src", tmp_path / "dst"
    make_tree(src)
    spec = {"name": "data", "source": str(src), "target": str(dst), "delete": True}
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval="1s"), prefix=wrapper)
    d.wait_ready()
    wait_mirrored(src, dst)
    before = snapshot(dst)
    os.chmod(parent, 0)
    try:
        d.wait_for("source_missing")
        n = rescans(d)
        d.wait_for("sync_finished", reason="rescan", count=n + 2)
        assert snapshot(dst) == before
    finally:
        os.chmod(parent, 0o755)
    d.wait_for("source_restored", same_folder=True)
    wait_mirrored(src, dst)
    still_mirroring(d, src, dst)


# -- 7. full disk and permission errors -------------------------------------------------------------

@pytest.mark.slow  # 8 s on 2 cores, more when they are busy
@pytest.mark.timeout(120)
def test_full_target_disk_retries_with_backoff_and_catches_up(tmp_path, daemon_factory):
    disk = tmp_path / "disk"
    disk.mkdir()
    with cleanup_mounts(disk):
        mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
        src, dst = tmp_path / "src", disk / "dst"
        src.mkdir()
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (1536 * 1024))
        spec = {"name": "data", "source": str(src), "target": str(dst), "delete": True}
        # debug: every retry is logged, not folded into one mirror_failed_repeated line
        d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0, log={"level": "debug"}))
        d.wait_ready()
        files = {f"f{i}": pattern(b"%d" % i, 256 * 1024) for i in range(6)}
        for name, data in files.items():
            (src / name).write_bytes(data)
        first = d.wait_for("mirror_failed", will_retry=True)[0]
        assert "ENOSPC" in first["error"], first
        path = first["path"]
        attempts = d.wait_for("mirror_failed", path=path, count=3, timeout=30)
        assert [r["retry_in_s"] for r in attempts[:3]] == [1.0, 2.0, 4.0], attempts
        # No partial file under a real name, no temp file left by a failed copy.
        for name in os.listdir(dst):
            assert TEMP_MARK not in name or process_alive(tempnames.temp_owner(name)[1]), name
            if TEMP_MARK not in name and name != LOCK_NAME:
                assert (dst / name).read_bytes() == files[name], f"{name} is partial"
        filler.unlink()
        wait_mirrored(src, dst, timeout=40)
        still_mirroring(d, src, dst)
        assert d.stop() == 0


def test_permission_errors_are_retried_while_other_files_flow(tmp_path, daemon_factory):
    wrapper = setpriv_or_skip()
    src, dst, spec = pair(tmp_path, delete=True)
    (src / "blocked").mkdir()
    (dst / "blocked").mkdir(parents=True)
    os.chown(dst / "blocked", 65534, 65534)  # someone else's folder, read-only to us
    os.chmod(dst / "blocked", 0o555)
    (src / "private").mkdir()
    for i in range(3):
        (src / "private" / f"p{i}").write_bytes(b"p")
    # debug: both EACCES failures are logged (at info the second is folded into a repeat line)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval="1s", log={"level": "debug"}), prefix=wrapper)
    d.wait_ready()
    # A source folder that becomes unreadable is not an empty one: its mirror stays.
    wait_until(lambda: (dst / "private" / "p2").exists(), 30, "private not mirrored")
    os.chmod(src / "private", 0)
    d.wait_for("source_unreadable", path="private")
    n = rescans(d)
    d.wait_for("sync_finished", reason="rescan", count=n + 2)
    assert sorted(os.listdir(dst / "private")) == ["p0", "p1", "p2"]
    assert not [r for r in d.events("mirror_failed") if r["path"].startswith("private/")]
    os.chmod(src / "private", 0o755)
    (src / "unreadable.txt").write_bytes(b"not for us yet")
    os.chmod(src / "unreadable.txt", 0)
    (src / "blocked" / "x").write_bytes(b"x")
    unreadable = d.wait_for("mirror_failed", path="unreadable.txt")[0]
    blocked = d.wait_for("mirror_failed", path="blocked/x")[0]
    for rec in (unreadable, blocked):
        assert rec["will_retry"] and "EACCES" in rec["error"], rec
    for i in range(20):  # other files keep flowing
        (src / f"ok{i}").write_bytes(b"%d" % i)
    wait_until(lambda: all((dst / f"ok{i}").exists() for i in range(20)), 30, "other files stalled")
    os.chmod(src / "unreadable.txt", 0o644)  # its event ends the backoff
    os.chown(dst / "blocked", 0, 0)          # no event: the backoff retry finds it
    wait_mirrored(src, dst, timeout=40)
    still_mirroring(d, src, dst)


# -- 8. hostile trees ------------------------------------------------------------------------------

def contents(root: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular file below root, never through a symlink.

    Walked with directory fds and O_NOFOLLOW: the target legitimately holds symlinks that
    point outside (mirrored as symlinks), and a path-based walk can race into one.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack = [(str(root), os.open(root, flags | os.O_DIRECTORY))]
    while stack:
        path, dfd = stack.pop()
        try:
            for name in os.listdir(dfd):
                try:
                    fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=dfd)
                except OSError:
                    continue  # gone, or a symlink (ELOOP)
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((f"{path}/{name}", fd))
                    continue
                with open(fd, "rb") as f:
                    if stat.S_ISREG(st.st_mode):
                        yield f"{path}/{name}", f.read()
        finally:
            os.close(dfd)


@pytest.mark.timeout(90)
def test_symlinks_and_swapped_folders_never_leak_outside_bytes(tmp_path, daemon_factory):
    secret = b"SECRET-" + os.urandom(8).hex().encode()
    outside = tmp_path / "outside"
    outside.mkdir()
    for j in range(10):
        (outside / f"f{j}").write_bytes(secret * 50)
    src, dst, spec = pair(tmp_path, delete=True)
    os.symlink(outside / "f0", src / "escape")
    os.symlink(outside, src / "escape-dir")
    (src / "sub").mkdir()
    for j in range(10):
        (src / "sub" / f"f{j}").write_bytes(b"public %d" % j)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval="1s"))
    d.wait_ready()
    wait_mirrored(src, dst)
    leaks: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            leaks.extend(path for path, data in contents(dst) if secret in data)

    scanner = threading.Thread(target=scan)
    scanner.start()
    rng = random.Random(4)
    try:
        deadline = time.monotonic() + 4
        rounds = 0
        while time.monotonic() < deadline:
            # sub becomes a symlink to the secrets while its files are being copied
            for j in rng.sample(range(10), 3):
                (src / "sub" / f"f{j}").write_bytes(b"public %d %d" % (j, rounds) * 1000)
            os.rename(src / "sub", src / "sub-real")
            os.symlink(outside, src / "sub")
            (src / "sub-real" / f"f{rounds % 10}").write_bytes(b"while swapped %d" % rounds)
            os.unlink(src / "sub")
            os.rename(src / "sub-real", src / "sub")
            rounds += 1
        wait_mirrored(src, dst, timeout=60)
    finally:
        stop.set()
        scanner.join()
    assert not leaks, f"secret bytes in the target: {sorted(set(leaks))[:5]}"
    assert not [path for path, data in contents(dst) if secret in data]
    assert os.readlink(dst / "escape") == str(outside / "f0")
    still_mirroring(d, src, dst, sub="sub")


def test_fifos_never_block_a_worker(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    os.mkfifo(src / "data.csv")          # found by the start-up comparison
    (src / "table.csv").write_bytes(b"a,b\n1,2\n")
    d = daemon_factory(write_config(tmp_path, [spec], workers=1, rescan_interval=0))
    d.wait_ready()
    wait_mirrored(src, dst)
    (src / "sub").mkdir()
    os.mkfifo(src / "sub" / "report.csv")  # found through an event
    (src / "table.csv").unlink()           # a data file replaced by a FIFO of the same name
    os.mkfifo(src / "table.csv")
    for i in range(10):
        (src / f"after{i}.csv").write_bytes(b"%d" % i)
    wait_mirrored(src, dst)
    assert not (dst / "table.csv").exists()
    d.wait_for("file_skipped", path="sub/report.csv", kind="fifo")
    d.wait_for("file_skipped", path="table.csv", kind="fifo")
    still_mirroring(d, src, dst)


def test_hostile_names_are_mirrored_exactly_and_logged_as_one_record(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0))
    d.wait_ready()
    forged = '{"event":"file_deleted","folder":"data","path":"forged","level":"info"}'
    evil = "evil\n" + forged + "\n"
    names = [b"with space.txt", b"new\nline", b"-leading-dash", b"--", "caf\u00e9.txt".encode(),
             "cafe\u0301.txt".encode(), b"bytes-\xff\xfe-not-utf8.bin", b"a" * 255,
             "\u00e9".encode() * 127 + b"x", b"tab\there", b'quote"and\\backslash', evil.encode()]
    assert len(names[7]) == 255 and len(names[8]) == 255
    bsrc = os.fsencode(src)
    os.mkdir(os.path.join(bsrc, b"dir with\nnewline \xff"))
    for i, name in enumerate(names):
        for folder in (bsrc, os.path.join(bsrc, b"dir with\nnewline \xff")):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"content %d " % i + name)
    wait_mirrored(src, dst)
    got = set(os.listdir(os.fsencode(dst)))
    assert set(names) <= got, set(names) - got
    # The temp file name never grows with the file's name.
    assert len(tempnames.temp_name("ffffffff")) < 64
    # Logs: one JSON record per line, the names escaped, nothing forged.
    for name in names:
        d.wait_for("file_mirrored", path=os.fsdecode(name))
    assert not [line for line in d.other_lines if line.strip()], d.other_lines[:5]
    assert not d.events("file_deleted", path="forged")
    still_mirroring(d, src, dst)


# -- 9. a bug in an event handler --------------------------------------------------------------------

def test_handler_errors_and_observer_crashes_do_not_stop_watching(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0),
                       env={"FOLDERMIRROR_FAULTS": "handler_error:poison,observer_crash:crash"})
    d.wait_ready()
    for i in range(5):
        (src / f"d{i}").mkdir()
    wait_mirrored(src, dst)  # watched by now: what is written below makes events of its own
    for i in range(5):  # the handler raises on every event for these: kept alive, reconciled
        (src / f"d{i}" / "poison").write_bytes(b"p%d" % i)
        (src / f"d{i}" / "fine").write_bytes(b"f%d" % i)
    d.wait_for("watch_handler_error")
    wait_mirrored(src, dst)
    d.wait_for("sync_finished", reason="handler_error")
    assert not d.events("watcher_restarted")
    for i in range(2):  # the observer thread itself dies, twice: rebuilt, reconciled
        (src / f"d{i}" / "crash").write_bytes(b"c%d" % i)
        d.wait_for("watcher_restarted", count=i + 1)
        wait_mirrored(src, dst)
    d.wait_for("sync_finished", reason="watch_restored")
    still_mirroring(d, src, dst, sub="d3")


# -- 10. random churn -----------------------------------------------------------------------------------

class Churn:
    """Seeded random file-system operations on a source tree, with a model of what exists."""

    def __init__(self, root: Path, outside: Path, seed: int) -> None:
        self.root, self.outside = root, outside
        self.rng = random.Random(seed)
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.n = 0

    def _new(self, prefix: str) -> str:
        self.n += 1
        parent = self.rng.choice([""] + sorted(self.dirs))
        return f"{parent}/{prefix}{self.n}" if parent else f"{prefix}{self.n}"

    def _data(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 100, 4096, 70_000]))

    def step(self) -> None:
        # weighted so that the tree grows to a few hundred files and then churns in place
        ops = {self.create: 8, self.modify: 4, self.truncate: 2, self.delete: 2, self.rename: 4,
               self.editor_save: 2, self.chmod: 2, self.mkdir: 2, self.rmdir: 0.2, self.rename_dir: 1,
               self.move_in: 2, self.move_out: 1}
        if len(self.files) > 400:
            ops[self.create] = ops[self.move_in] = 0
            ops[self.delete] = 6
        self.rng.choices(list(ops), weights=list(ops.values()))[0]()

    def p(self, rel: str) -> Path:
        return self.root / rel

    def create(self) -> None:
        rel = self._new("f")
        self.p(rel).write_bytes(self._data())
        self.files.add(rel)

    def _file(self) -> str | None:
        return self.rng.choice(sorted(self.files)) if self.files else None

    def modify(self) -> None:
        if (rel := self._file()) is not None:
            with open(self.p(rel), "r+b") as f:
                f.seek(self.rng.randrange(0, 5000))
                f.write(self.rng.randbytes(self.rng.randrange(1, 3000)))

    def truncate(self) -> None:
        if (rel := self._file()) is not None:
            os.truncate(self.p(rel), self.rng.randrange(0, 200))

    def delete(self) -> None:
        if (rel := self._file()) is not None:
            self.p(rel).unlink()
            self.files.discard(rel)

    def rename(self) -> None:
        if (rel := self._file()) is None:
            return
        other = self._file()
        dest = other if other != rel and self.rng.random() < 0.3 else self._new("r")
        os.replace(self.p(rel), self.p(dest))
        self.files.discard(rel)
        self.files.add(dest)

    def editor_save(self) -> None:
        if (rel := self._file()) is not None:
            tmp = self.p(rel).with_name(self.p(rel).name + ".swx")
            tmp.write_bytes(self._data())
            os.replace(tmp, self.p(rel))

    def chmod(self) -> None:
        if (rel := self._file()) is not None:
            os.chmod(self.p(rel), self.rng.choice([0o600, 0o640, 0o644, 0o755, 0o444]))

    def mkdir(self) -> None:
        rel = self._new("d")
        self.p(rel).mkdir()
        self.dirs.add(rel)

    def _dir(self) -> str | None:
        return self.rng.choice(sorted(self.dirs)) if self.dirs else None

    def _drop_below(self, rel: str) -> None:
        self.files = {f for f in self.files if not f.startswith(rel + "/")}
        self.dirs = {x for x in self.dirs if x != rel and not x.startswith(rel + "/")}

    def rmdir(self) -> None:
        if (rel := self._dir()) is not None:
            shutil.rmtree(self.p(rel))
            self._drop_below(rel)

    def rename_dir(self) -> None:
        if (rel := self._dir()) is None:
            return
        dest = self._new("m")
        if dest.startswith(rel + "/"):
            return
        os.rename(self.p(rel), self.p(dest))
        self.files = {dest + f[len(rel):] if f.startswith(rel + "/") else f for f in self.files}
        self.dirs = {dest + x[len(rel):] if x == rel or x.startswith(rel + "/") else x for x in self.dirs}

    def move_in(self) -> None:
        self.n += 1
        staged = self.outside / f"in{self.n}"
        if self.rng.random() < 0.5:
            staged.write_bytes(self._data())
            rel = self._new("i")
            os.rename(staged, self.p(rel))
            self.files.add(rel)
        else:
            staged.mkdir()
            for k in range(self.rng.randrange(0, 4)):
                (staged / f"g{k}").write_bytes(self._data())
            rel = self._new("t")
            os.rename(staged, self.p(rel))
            self.dirs.add(rel)
            self.files |= {f"{rel}/{c.name}" for c in self.p(rel).iterdir()}

    def move_out(self) -> None:
        self.n += 1
        if self.dirs and self.rng.random() < 0.3:
            rel = self._dir()
            assert rel is not None
            os.rename(self.p(rel), self.outside / f"out{self.n}")
            self._drop_below(rel)
        elif (rel := self._file()) is not None:
            os.rename(self.p(rel), self.outside / f"out{self.n}")
            self.files.discard(rel)


@pytest.mark.slow  # 11 s on 2 cores
@pytest.mark.timeout(120)
def test_random_churn_ends_in_sync(tmp_path, daemon_factory):
    seed = int(os.environ.get("FOLDERMIRROR_CHURN_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"churn seed: {seed} (replay with FOLDERMIRROR_CHURN_SEED={seed})")
    src, dst, spec = pair(tmp_path, delete=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    d = daemon_factory(write_config(tmp_path, [spec], rescan_interval=0))
    d.wait_ready()
    churn = Churn(src, outside, seed)
    deadline = time.monotonic() + 10
    steps = 0
    while time.monotonic() < deadline:
        churn.step()
        steps += 1
        if steps % 50 == 0:
            time.sleep(0.01)  # sleep-ok: lets the daemon copy in the middle of the churn, not only after it
    print(f"churn: {steps} operations, {len(churn.files)} files, {len(churn.dirs)} folders at the end")
    wait_mirrored(src, dst, timeout=60)
    assert not d.events("mirror_failed", will_retry=False), d.events("mirror_failed")
    still_mirroring(d, src, dst)


# -- 11. mass-delete guard -------------------------------------------------------------------------------

def test_mass_delete_guard_holds_a_lost_source_until_told(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    make_tree(src, dirs=5, files=20)  # 100 files in 5 folders
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    d = daemon_factory(cfg)
    d.wait_ready()
    wait_mirrored(src, dst)
    # Deletions seen as events are replayed as usual, however many.
    shutil.rmtree(src / "d4")
    wait_mirrored(src, dst)
    assert d.stop() == 0
    # While the daemon is down the source loses most of its files.
    for i in range(3):
        shutil.rmtree(src / f"d{i}")
    for j in range(15):
        (src / "d3" / f"f{j}").unlink()
    (src / "d3" / "f19").write_bytes(b"changed while down")
    (src / "new").write_bytes(b"new while down")
    d = daemon_factory(cfg)
    d.wait_ready()
    held = d.wait_for("mass_delete_held")[0]
    assert held["would_delete"] == 3 + 60 + 15, held
    assert held["source_entries"] == 7 and held["max_delete_fraction"] == 0.5, held
    assert "max_delete_fraction" in held["fix"], held
    assert (dst / "d0" / "f0").exists() and (dst / "d3" / "f0").exists(), "the guard let deletions through"
    assert not d.events("file_deleted")
    # copies go on
    assert (dst / "new").read_bytes() == b"new while down"
    assert (dst / "d3" / "f19").read_bytes() == b"changed while down"
    # The fix named in the log: allow it, reload.
    data = yaml.safe_load(cfg.read_text())
    data["folders"][0]["max_delete_fraction"] = 1
    cfg.write_text(yaml.safe_dump(data))
    d.send(signal.SIGHUP)
    d.wait_for("config_reloaded")
    wait_mirrored(src, dst)
    still_mirroring(d, src, dst)


def test_unmounted_source_is_not_wiped_from_the_target(tmp_path, daemon_factory):
    store, src = tmp_path / "store", tmp_path / "src"
    store.mkdir()
    src.mkdir()
    with cleanup_mounts(src):
        mount("--bind", str(store), str(src))
        make_tree(src, dirs=2, files=5)
        dst = tmp_path / "dst"
        spec = {"name": "data", "source": str(src), "target": str(dst), "delete": True}
        d = daemon_factory(write_config(tmp_path, [spec], workers=1, rescan_interval="1s"), "--log-level", "debug",
                           env={"FOLDERMIRROR_FAULTS": "slow_copy:big.bin"})
        d.wait_ready()
        wait_mirrored(src, dst)
        before = snapshot(dst)
        # Changes queued behind a long copy when the mount goes away: seen through the
        # empty mount point they look like deletions, and must not be replayed as such.
        (src / "big.bin").write_bytes(pattern(b"big", 24 * MiB))
        wait_for_temp(dst)
        for rel in ("d0/f2", "d1/f3"):
            os.utime(src / rel)
        subprocess.run(["umount", "-l", str(src)], check=True)  # lazy: the copy holds a file open
        d.wait_for("source_restored", same_folder=False)
        held = d.wait_for("mass_delete_held")[0]
        assert held["source_entries"] == 0 and held["would_delete"] >= 12, held
        n = rescans(d)
        d.wait_for("sync_finished", reason="rescan", count=n + 2)
        after = snapshot(dst)
        assert {k: v for k, v in after.items() if k != "big.bin"} == before, \
            "the target lost files after the source was unmounted:\n" + "\n".join(
                json.dumps(r) for r in d.records if "d1" in str(r.get("path")) or r["event"].startswith("source"))
        assert not d.events("file_deleted")
        mount("--bind", str(store), str(src))
        d.wait_for("source_restored", count=2)
        (src / "d0" / "f0").unlink()  # a real deletion afterwards is replayed
        wait_mirrored(src, dst)
        still_mirroring(d, src, dst)
        assert d.stop() == 0
