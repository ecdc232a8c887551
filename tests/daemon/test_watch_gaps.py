"""What the watcher alone would miss: a directory that becomes readable, a new directory's
contents, a file that is never closed, a target deleted under the daemon. Real daemons.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from foldermirror import targetlock
from foldermirror.targetlock import TargetLocked
from foldermirror.tempnames import LOCK_NAME
from helpers import never_within, pair, setpriv_or_skip, status, wait_mirrored, wait_until, write_config


@pytest.mark.timeout(90)
def test_a_directory_made_readable_is_watched_and_caught_up_at_once(tmp_path, daemon_factory):
    limited = setpriv_or_skip()
    src, dst, spec = pair(tmp_path, delete=True)
    (src / "locked" / "deep").mkdir(parents=True)
    (src / "locked" / "old.txt").write_bytes(b"written while closed")
    (src / "locked" / "deep" / "d.txt").write_bytes(b"deep")
    (src / "locked2").mkdir()
    os.chmod(src / "locked", 0)
    os.chmod(src / "locked2", 0)
    try:
        # No periodic rescan: only the daemon's reaction to the chmod can mirror what follows.
        cfg = write_config(tmp_path, [spec], rescan_interval=0, control_socket=str(tmp_path / "ctl.sock"))
        d = daemon_factory(cfg, prefix=limited)
        d.wait_ready()
        got = status(cfg)["folders"][0]
        assert got["unreadable"] == {"count": 2, "paths": ["locked", "locked2"]}, got
        assert any("locked, locked2" in p for p in got["problems"]), got["problems"]

        os.chmod(src / "locked", 0o755)
        wait_until(lambda: (dst / "locked" / "deep" / "d.txt").exists(), 20, f"not caught up:\n{d.tail()}")
        # Watched now: files written in it and below it are mirrored live.
        (src / "locked" / "new.txt").write_bytes(b"new")
        (src / "locked" / "deep" / "new2.txt").write_bytes(b"new2")
        wait_until(lambda: (dst / "locked" / "deep" / "new2.txt").exists()
                   and (dst / "locked" / "new.txt").exists(), 20, f"not watched:\n{d.tail()}")
        got = status(cfg)["folders"][0]
        assert got["unreadable"] == {"count": 1, "paths": ["locked2"]}, got
        assert [r["reason"] for r in d.events("sync_finished")] == ["startup"], "a full comparison ran"
        assert not d.events("watch_rebuilt")
    finally:
        os.chmod(src / "locked", 0o755)
        os.chmod(src / "locked2", 0o755)
    wait_mirrored(src, dst)
    assert d.stop() == 0


@pytest.mark.timeout(90)
def test_a_new_directory_is_compared_by_the_daemon_without_the_intakes_replay(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "no_replay:on"})
    d.wait_ready()
    # Made outside and moved in: no event of its own for anything inside it.
    outside = tmp_path / "outside"
    (outside / "a" / "b").mkdir(parents=True)
    for i in range(50):
        (outside / "a" / f"f{i}").write_bytes(b"%d" % i)
        (outside / "a" / "b" / f"g{i}").write_bytes(b"g%d" % i)
    os.rename(outside / "a", src / "moved-in")
    # Made in place, filled at once: entries may be written before its watch exists.
    for n in range(20):
        (src / f"made{n}" / "sub").mkdir(parents=True)
        (src / f"made{n}" / "sub" / "x").write_bytes(b"x")
    wait_mirrored(src, dst, timeout=30)
    assert [r["reason"] for r in d.events("sync_finished")] == ["startup"], "a full comparison ran"
    assert d.stop() == 0


@pytest.mark.timeout(90)
def test_without_the_daemons_own_comparison_the_replay_off_loses_files(tmp_path, daemon_factory):
    """The other test's fault is real: with it, a moved-in tree's files come from nothing but the daemon."""
    src, dst, spec = pair(tmp_path, delete=True)
    outside = tmp_path / "outside"
    (outside / "a").mkdir(parents=True)
    (outside / "a" / "f").write_bytes(b"f")
    cfg = write_config(tmp_path, [spec], rescan_interval=0, log={"level": "debug"})
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "no_replay:on"})
    d.wait_ready()
    os.rename(outside / "a", src / "a")
    wait_mirrored(src, dst, timeout=30)
    walks = [r for r in d.events("reconcile_walked") if r.get("path") == "a"]
    assert walks and walks[0]["differences"] >= 1, f"the file came from elsewhere:\n{d.tail()}"
    assert d.stop() == 0


def _pattern(size: int) -> bytes:
    import hashlib

    block = hashlib.sha256(b"busy").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


class _Appender(threading.Thread):
    """Appends a chunk every `every` seconds to one open file until stopped; never closes it early."""

    def __init__(self, path: Path, start: int, chunk: int, every: float, total: int) -> None:
        super().__init__(daemon=True)
        self.path, self.start_size, self.chunk, self.every = path, start, chunk, every
        self.data = _pattern(total)
        self.stop_event = threading.Event()
        self.written = 0

    def run(self) -> None:
        with open(self.path, "wb", buffering=0) as f:
            f.write(self.data[:self.start_size])
            self.written = self.start_size
            while not self.stop_event.wait(self.every) and self.written + self.chunk <= len(self.data):
                f.write(self.data[self.written:self.written + self.chunk])
                self.written += self.chunk


@pytest.mark.timeout(90)
def test_a_file_appended_for_ever_is_published_every_max_delay_as_a_real_prefix(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, max_delay="1s")
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    # The copy of app.log goes 1 MiB per 50 ms, so appends land in the middle of it.
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "slow_copy:app.log"})
    d.wait_ready()
    writer = _Appender(src / "app.log", start=3 << 20, chunk=16 << 10, every=0.02, total=8 << 20)
    started = time.monotonic()
    writer.start()
    seen: list[int] = []
    try:
        def published() -> bool:
            try:
                data = (dst / "app.log").read_bytes()
            except FileNotFoundError:
                return False
            assert writer.data.startswith(data), f"the mirror holds {len(data)} bytes that are no prefix"
            if not seen or seen[-1] != len(data):
                seen.append(len(data))
            return len(seen) >= 2
        wait_until(published, 20, lambda: f"published sizes {seen} while writing; last lines:\n{d.tail()}")
        first = d.wait_for("file_mirrored", path="app.log")[0]
        assert first.get("busy") is True, first
        assert time.monotonic() - started < 15, "not published within a few max_delays"
        assert writer.is_alive(), (f"the writer finished before two publications ({seen}, "
                                   f"{time.monotonic() - started:.1f}s): the test proves nothing\n{d.tail()}")
    finally:
        writer.stop_event.set()
        writer.join(10)
    wait_mirrored(src, dst, timeout=30)
    assert not d.events("file_busy"), "an append was taken for a rewrite"
    assert d.stop() == 0


@pytest.mark.timeout(90)
def test_a_file_rewritten_in_place_for_ever_is_not_published_torn_nor_copied_in_a_loop(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, max_delay="500ms")
    cfg = write_config(tmp_path, [spec], rescan_interval=0, log={"level": "debug"})
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "slow_copy:db.bin"})
    d.wait_ready()
    size = 3 << 20
    stop = threading.Event()

    def rewrite() -> None:
        with open(src / "db.bin", "wb", buffering=0) as f:
            f.write(b"\0" * size)
            n = 0
            while not stop.wait(0.02):
                n += 1
                f.seek((n * 7919 * 4096) % size)
                f.write(n.to_bytes(4, "little") * 1024)
    t = threading.Thread(target=rewrite, daemon=True)
    t.start()
    try:
        d.wait_for("file_busy", path="db.bin", timeout=20)
        before = len(d.events("file_changed_during_copy", path="db.bin"))

        def tries() -> int:
            return len(d.events("file_changed_during_copy", path="db.bin")) - before

        # For 3 s: one attempt per max_delay (each takes ~150 ms of slow copy), not one per
        # event, and never a copy published of a file changing under it.
        never_within(lambda: tries() > 3 / 0.5 + 2 or (dst / "db.bin").exists(), 3.0,
                     lambda: f"{tries()} copies; published: {(dst / 'db.bin').exists()}")
    finally:
        stop.set()
        t.join(10)
    wait_mirrored(src, dst, timeout=30)
    assert len(d.events("file_busy", path="db.bin")) == 1
    assert d.stop() == 0


def _fill(src: Path) -> None:
    (src / "top.txt").write_bytes(b"top")
    (src / "dir" / "sub").mkdir(parents=True)
    for i in range(30):
        (src / "dir" / f"f{i}").write_bytes(b"%d" % i)
    (src / "dir" / "sub" / "deep.txt").write_bytes(b"deep")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["root deleted", "root deleted and made again", "emptied", "emptied but the lock file"])
def test_a_target_deleted_under_the_daemon_is_noticed_and_mirrored_again(tmp_path, daemon_factory, how):
    src, dst, spec = pair(tmp_path, delete=True)
    _fill(src)
    cfg = write_config(tmp_path, [spec], rescan_interval=0)  # no periodic safety net
    d = daemon_factory(cfg)
    d.wait_ready()
    wait_mirrored(src, dst)
    started = time.monotonic()
    if how.startswith("emptied"):
        for entry in dst.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != LOCK_NAME or how == "emptied":
                entry.unlink()
    else:
        shutil.rmtree(dst)
        if how == "root deleted and made again":
            dst.mkdir()
    wait_mirrored(src, dst, timeout=20)
    took = time.monotonic() - started
    assert took < 10, f"took {took:.1f}s"
    if how != "emptied but the lock file":  # that one is mended path by path, with no line of its own
        lost = d.wait_for("target_lost")
        assert lost[0]["path"] == str(dst) and lost[0]["fix"], lost
        d.wait_for("sync_finished", reason="target_restored")
    assert not d.events("sync_finished", reason="rescan")
    # The new target is this daemon's: its lock is held again.
    with pytest.raises(TargetLocked, match=f"pid {d.proc.pid}"):
        targetlock.acquire(str(dst), str(cfg))
    (src / "after.txt").write_bytes(b"after")  # still mirrored into the new target
    wait_mirrored(src, dst, timeout=20)
    assert d.stop() == 0
