"""A real daemon on real folders: every kind of change ends with an exact mirror."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading

import pytest

from helpers import ENV, pair, temps, wait_mirrored, wait_settled, wait_until, write_config


@pytest.fixture
def running(tmp_path, daemon_factory):
    """A daemon mirroring data-src → data-dst with delete: true."""
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    return src, dst, d


def test_new_modified_and_empty_files(running):
    src, dst, d = running
    (src / "a.txt").write_bytes(b"hello")
    (src / "empty").touch()
    (src / "emptydir").mkdir()
    os.chmod(src / "a.txt", 0o640)
    wait_mirrored(src, dst)
    (src / "a.txt").write_bytes(b"changed content")
    wait_mirrored(src, dst)
    rec = d.wait_for("file_mirrored", path="a.txt")[0]
    for key in ("folder", "bytes", "duration_ms", "latency_ms", "worker_pid"):
        assert key in rec, rec
    assert rec["folder"] == "data"


def test_rename_into_folder_and_editor_save(running, tmp_path):
    src, dst, d = running
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"moved in")
    os.rename(outside, src / "moved.txt")
    (src / "doc.txt").write_bytes(b"v1")
    wait_mirrored(src, dst)
    # An editor save: write a temp file, rename it over the real one.
    (src / ".doc.txt.swx").write_bytes(b"v2 from the editor")
    os.replace(src / ".doc.txt.swx", src / "doc.txt")
    wait_mirrored(src, dst)


def test_tree_moved_in_and_mkdir_p_with_files(running, tmp_path):
    src, dst, d = running
    tree = tmp_path / "tree"
    for i in range(5):
        sub = tree / f"d{i}" / "inner"
        sub.mkdir(parents=True)
        (sub / f"f{i}").write_bytes(os.urandom(100 + i))
        (tree / f"d{i}" / "top").write_bytes(b"t")
    (tree / "empty").mkdir()
    os.rename(tree, src / "tree")
    deep = src / "a" / "b" / "c"
    deep.mkdir(parents=True)
    for level in (src / "a", src / "a" / "b", deep):
        (level / "file").write_bytes(level.name.encode() * 10)
    wait_mirrored(src, dst)


def test_rapid_rewrites_are_coalesced(running):
    src, dst, d = running
    target = src / "busy.log"
    writes = 300
    for i in range(writes):
        with open(target, "wb") as f:
            f.write(f"version {i}\n".encode() * 50)
    wait_mirrored(src, dst)
    # the log line follows the rename into place: wait for it, then count
    copies = len(d.wait_for("file_mirrored", path="busy.log"))
    assert 1 <= copies < writes // 3, f"{copies} copies for {writes} writes"


def test_delete_and_rename_are_replayed(running):
    src, dst, d = running
    (src / "old.bin").write_bytes(os.urandom(50_000))
    (src / "dir").mkdir()
    (src / "dir" / "x").write_bytes(b"x")
    (src / "gone.txt").write_bytes(b"bye")
    wait_mirrored(src, dst)
    wait_settled(d.config)
    os.rename(src / "old.bin", src / "new.bin")
    os.rename(src / "dir", src / "renamed-dir")
    (src / "gone.txt").unlink()
    wait_mirrored(src, dst)
    renamed = d.wait_for("file_mirrored", path="new.bin")[-1]
    assert renamed.get("renamed_from") == "old.bin", renamed
    d.wait_for("file_mirrored", path="renamed-dir", renamed_from="dir")
    d.wait_for("file_deleted", path="gone.txt")


def test_delete_false_never_removes(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)  # delete defaults to false
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    (src / "keep.txt").write_bytes(b"keep me")
    (src / "sub").mkdir()
    (src / "sub" / "f").write_bytes(b"f")
    wait_mirrored(src, dst)
    (src / "keep.txt").unlink()
    shutil.rmtree(src / "sub")
    (src / "after.txt").write_bytes(b"after")
    wait_mirrored(src, dst, delete=False)
    assert (dst / "keep.txt").read_bytes() == b"keep me"
    assert (dst / "sub" / "f").read_bytes() == b"f"
    assert not d.events("file_deleted")


def test_symlinks_mirrored_not_followed_and_fifo_skipped(running, tmp_path):
    src, dst, d = running
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    os.symlink(secret, src / "escape")
    os.symlink("missing-target", src / "dangling")
    (src / "real").write_bytes(b"real")
    os.symlink("real", src / "rel")
    os.mkfifo(src / "data.csv")
    wait_mirrored(src, dst)
    assert os.readlink(dst / "escape") == str(secret)
    assert not (dst / "data.csv").exists()
    d.wait_for("file_skipped", path="data.csv", kind="fifo")
    # the worker that met the FIFO is still serving
    (src / "after-fifo").write_bytes(b"still flowing")
    wait_mirrored(src, dst)


def test_several_pairs_with_own_options(tmp_path, daemon_factory):
    a_src, a_dst, a = pair(tmp_path, "alpha", delete=True, exclude=["*.tmp", "cache"])
    b_src, b_dst, b = pair(tmp_path, "beta", durable=True)
    d = daemon_factory(write_config(tmp_path, [a, b]))
    d.wait_ready()
    (a_src / "keep.txt").write_bytes(b"a")
    (a_src / "skip.tmp").write_bytes(b"no")
    (a_src / "cache").mkdir()
    (a_src / "cache" / "blob").write_bytes(b"no")
    (a_src / "sub").mkdir()
    (a_src / "sub" / "deep.tmp").write_bytes(b"no")
    (b_src / "b.txt").write_bytes(b"b")
    (b_src / "x.tmp").write_bytes(b"beta has no excludes")

    def excluded(rel: str) -> bool:
        return rel.endswith(".tmp") or rel == "cache" or rel.startswith("cache/")

    wait_mirrored(a_src, a_dst, exclude=excluded)
    wait_mirrored(b_src, b_dst)
    assert not (a_dst / "skip.tmp").exists() and not (a_dst / "cache").exists()
    assert (b_dst / "x.tmp").exists()
    d.wait_for("file_mirrored", folder="alpha", path="keep.txt")
    d.wait_for("file_mirrored", folder="beta", path="x.tmp")
    assert {r["folder"] for r in d.events("file_mirrored")} == {"alpha", "beta"}


def test_exclude_applies_to_catch_up_and_deletion(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, exclude=["*.swp", "build/out"])
    (src / "a.swp").write_bytes(b"no")
    (src / "build").mkdir()
    (src / "build" / "out").write_bytes(b"no")
    (src / "build" / "src.c").write_bytes(b"yes")
    dst.mkdir()
    (dst / "target-only.swp").write_bytes(b"excluded paths are never deleted")
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    assert (dst / "build" / "src.c").read_bytes() == b"yes"
    assert not (dst / "a.swp").exists() and not (dst / "build" / "out").exists()
    assert (dst / "target-only.swp").exists()


def test_catch_up_at_start_and_idle_restart_copies_nothing(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(i * 10))
    cfg = write_config(tmp_path, [spec])
    d = daemon_factory(cfg)
    d.wait_ready()
    wait_mirrored(src, dst)
    first = d.events("sync_finished", reason="startup")[0]
    assert first["files_mirrored"] >= 50, first
    assert d.stop() == 0
    # changes made while the daemon was down
    (src / "f1").write_bytes(b"changed while down")
    (src / "f2").unlink()
    (src / "new").write_bytes(b"new while down")
    d2 = daemon_factory(cfg)
    d2.wait_ready()
    wait_mirrored(src, dst)
    assert d2.stop() == 0
    d3 = daemon_factory(cfg)
    d3.wait_ready()
    finished = d3.events("sync_finished", reason="startup")[0]
    assert finished["files_mirrored"] == 0 and finished["differences"] == 0, finished
    assert not d3.events("file_mirrored")


def test_stale_temp_files_removed_at_start(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    (dst / "sub").mkdir(parents=True)
    stale = dst / "sub" / ".foldermirror-0badf00d-0123456789ab.tmp"
    stale.write_bytes(b"half a file")
    (src / "sub").mkdir()
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    assert not stale.exists()
    assert d.events("stale_temps_removed")


def test_no_partial_file_is_ever_visible(running):
    src, dst, d = running
    versions = [bytes([i]) * (4 << 20) for i in range(1, 6)]
    seen: set[int] = set()
    bad: list[str] = []
    stop = []

    def watch() -> None:
        while not stop:
            try:
                data = (dst / "big.bin").read_bytes()
            except FileNotFoundError:
                continue
            if data not in versions:
                bad.append(f"{len(data)} bytes, first byte {data[:1]!r}")
            else:
                seen.add(data[0])

    t = threading.Thread(target=watch)
    t.start()
    try:
        for v in versions:
            with open(src / "big.bin", "wb") as f:
                for off in range(0, len(v), 1 << 18):
                    f.write(v[off:off + (1 << 18)])
                    f.flush()
            wait_until(lambda v=v: (dst / "big.bin").exists() and (dst / "big.bin").read_bytes() == v, 30,
                       "version not mirrored")
    finally:
        stop.append(True)
        t.join()
    assert not bad, f"partial or mixed files were visible: {bad[:5]}"
    assert seen, "the reader never saw the file"
    wait_mirrored(src, dst)


def test_a_watcher_of_the_target_sees_each_file_arrive_by_rename(running):
    """Tools downstream watch a mirror as they watch rsync's output: `inotifywait -e
    moved_to`. Every new or changed file must arrive under its name by a rename (IN_MOVED_TO),
    never be created or written there in place (IN_CREATE / IN_CLOSE_WRITE)."""
    src, dst, d = running
    (src / "warm").write_bytes(b"x")
    wait_mirrored(src, dst)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    in_close_write, in_moved_to, in_create = 0x8, 0x80, 0x100
    assert fd >= 0 and libc.inotify_add_watch(fd, bytes(dst), in_close_write | in_moved_to | in_create) >= 0
    try:
        names = {f"n{i}": os.urandom(100 * i) for i in range(20)}
        for name, data in names.items():
            (src / name).write_bytes(data)
        (src / "warm").write_bytes(b"changed")  # a replacement too
        wait_mirrored(src, dst)
        seen: dict[str, int] = {}
        while True:
            try:
                buf = os.read(fd, 65536)
            except BlockingIOError:
                break
            off = 0
            while off < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + length].rstrip(b"\0").decode()
                off += 16 + length
                seen[name] = seen.get(name, 0) | mask
    finally:
        os.close(fd)
    for name in [*names, "warm"]:
        assert seen.get(name) == in_moved_to, f"{name}: inotify mask {seen.get(name, 0):#x}, want IN_MOVED_TO only"


def test_worker_killed_mid_burst_loses_nothing(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    wait_until(lambda: len(d.worker_pids()) == 2, 10, "two workers")
    for i in range(300):
        (src / f"f{i:04}").write_bytes(os.urandom(20_000))
        if i == 100:
            os.kill(d.worker_pids()[0], signal.SIGKILL)
    wait_mirrored(src, dst, timeout=60)
    d.wait_for("worker_lost")
    # killing an idle worker must not wedge the pool either: pick one of the new pool's
    # workers by the file it just mirrored (a retired worker's death is no news)
    (src / "probe").write_bytes(b"which worker?")
    worker = d.wait_for("file_mirrored", path="probe")[0]["worker_pid"]
    os.kill(worker, signal.SIGKILL)
    d.wait_for("worker_lost", count=2)
    (src / "after").write_bytes(b"after the kill")
    wait_mirrored(src, dst)
    assert d.stop() == 0


def test_every_directory_has_a_line_and_counts_are_of_files(tmp_path, daemon_factory):
    """Each directory that appears in the mirror has a file_mirrored line (kind dir), whether
    its own event or a file inside it made it; the counts of files mirrored leave them out."""
    src, dst, spec = pair(tmp_path)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "c.txt").write_bytes(b"c")
    (src / "a" / "d.txt").write_bytes(b"d")
    (src / "e").mkdir()
    wait_mirrored(src, dst)
    for rel in ("a", "a/b", "e"):
        d.wait_for("file_mirrored", path=rel, kind="dir")
    assert d.stop() == 0
    stopped = d.events("daemon_stopped")[0]
    assert stopped["files_mirrored"] == 2, stopped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_is_clean(tmp_path, daemon_factory, sig):
    src, dst, spec = pair(tmp_path)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    (src / "big").write_bytes(os.urandom(8 << 20))
    assert d.stop(sig) == 0
    assert d.events("daemon_stopping") and d.events("daemon_stopped")
    assert not [line for line in d.other_lines if line.strip()], d.other_lines
    assert not temps(dst), temps(dst)


def test_sigint_to_process_group_is_clean(tmp_path):
    """Ctrl-C reaches the whole process group: workers must leave it to the main process."""
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec])
    # PYTHONFAULTHANDLER: a daemon that does not stop is sent SIGABRT, and prints every thread's stack.
    proc = subprocess.Popen([sys.executable, "-m", "foldermirror", "run", "--config", str(cfg),
                             "--log-format", "json"], stderr=subprocess.PIPE, env={**ENV, "PYTHONFAULTHANDLER": "1"},
                            start_new_session=True)
    lines: list[bytes] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if b'"sync_finished"' in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, rest = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, rest = proc.communicate(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the fork server and the workers, if still there
        pytest.fail("the daemon did not stop within 30 s of SIGINT; its threads, then its last lines:\n"
                    + rest.decode(errors="replace")[-6000:])
    assert proc.returncode == 0, rest.decode()
    assert b"Traceback" not in rest and b"KeyboardInterrupt" not in rest, rest.decode()

