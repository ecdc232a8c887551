"""Remote targets under faults, with a real daemon and a real OpenSSH server (tests/sshd.py):
a peer that stops answering, a receiver that cannot write, a file vanishing mid-batch, the
daemon killed mid-transfer. After each, the oracle: target == source, no temp file left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    descendants,
    remote_pair,
    remote_temps,
    still_mirroring,
    tree_diff,
    wait_mirrored,
    wait_until,
    write_config,
)
from sshd import SshServer, ssh_config_block

pytestmark = pytest.mark.timeout(180)

FAST = {"keepalive": "1s", "retry_min": "250ms", "retry_max": "1s"}


def ssh_masters(pid: int) -> list[int]:
    """The `ssh -N -M` processes below the daemon `pid`."""
    out = []
    for p in descendants(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"-M" in argv and b"ssh" in argv:
            out.append(p)
    return out


def test_a_stopped_peer_turns_the_folder_remote_down_within_the_keepalive(tmp_path: Path, sshd: SshServer,
                                                                           daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "a").write_text("a")
    d = daemon_factory(write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), **FAST}))
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    sshd.pause_sessions()  # the peer's processes are stopped; TCP still answers
    stopped = time.monotonic()
    try:
        (src / "during").write_text("written while the peer is stopped")
        line = d.wait_for("remote_down", 20)[0]
        took = time.monotonic() - stopped
        assert took < 10, f"remote_down after {took:.1f}s: keepalive 1s × 3 should find it in ~3s"
        assert line["error"] and line["fix"], line
    finally:
        sshd.resume_sessions()
    d.wait_for("remote_up", 30, reconnect=True)
    wait_mirrored(src, dst, 60)
    assert remote_temps(dst) == []
    still_mirroring(d, src, dst)


def test_a_receiver_that_cannot_write_fails_those_files_and_the_others_arrive(tmp_path: Path, sshd: SshServer,
                                                                             daemon_factory):
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "locked").mkdir()
    (src / "free").mkdir()
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)))
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    if subprocess.run(["chattr", "+i", str(dst / "locked")], capture_output=True).returncode != 0:
        pytest.skip(f"{dst} is on a file system without the immutable attribute")
    try:
        (src / "locked" / "f").write_text("cannot land")
        (src / "free" / "g").write_text("lands")
        failed = d.wait_for("mirror_failed", 30, path="locked/f")[0]
        assert failed["will_retry"] is True and failed["errno"] == "EPERM", failed
        assert "fix" in failed
        d.wait_for("file_mirrored", 30, path="free/g")
        assert (dst / "free" / "g").read_text() == "lands"
        assert not (dst / "locked" / "f").exists()
    finally:
        subprocess.run(["chattr", "-i", str(dst / "locked")], check=True)
    wait_mirrored(src, dst, 60)  # the retry lands it once the directory is writable again
    assert remote_temps(dst) == []


def test_a_file_vanishing_mid_batch_is_looked_at_again_and_the_batch_lands(tmp_path: Path, sshd: SshServer,
                                                                          daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)),
                       env={"FOLDERMIRROR_FAULTS": "vanish:vanishing"})
    d.wait_ready(60)
    for name in ("before", "vanishing", "after"):
        (src / name).write_text(name)
    wait_mirrored(src, dst, 30)  # "vanishing" is gone from the source: it must not be in the target
    assert not (src / "vanishing").exists() and not (dst / "vanishing").exists()
    assert d.events("mirror_failed") == [], d.tail()
    assert remote_temps(dst) == []


def test_the_daemon_killed_mid_transfer_leaves_no_master_and_the_next_start_converges(
        tmp_path: Path, sshd: SshServer, daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "bwlimit": 500})
    d = daemon_factory(config)
    d.wait_ready(60)
    (src / "big.bin").write_bytes(os.urandom(4 << 20))  # 8 s at 500 KiB/s
    (src / "small").write_text("small")

    def in_progress() -> bool:
        return any(remote_temps(dst)) or (dst / ".foldermirror-partial.tmp").exists()
    wait_until(in_progress, 30, "no transfer of big.bin in progress on the remote side")
    masters = ssh_masters(d.proc.pid)
    assert masters, "the daemon runs no ssh master"
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and b"Z" not in Path(f"/proc/{p}/stat").read_bytes()
                               .split(b")")[1][:3] for p in masters), 10,
               f"ssh master(s) {masters} outlived the daemon")
    d.close()
    again = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)))
    again.wait_ready(90)
    wait_mirrored(src, dst, 90)
    assert remote_temps(dst) == [], remote_temps(dst)
    assert tree_diff(src, dst) == []
    assert again.stop() == 0


def test_remote_folders_are_added_changed_and_removed_by_reload(tmp_path: Path, sshd: SshServer, daemon_factory):
    local_src, local_dst = tmp_path / "l-src", tmp_path / "l-dst"
    local_src.mkdir()
    local = {"name": "local", "source": str(local_src), "target": str(local_dst)}
    config = write_config(tmp_path, [local], ssh=ssh_config_block(sshd))
    d = daemon_factory(config)
    d.wait_ready(60)
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "a").write_text("a")
    write_config(tmp_path, [local, folder], ssh=ssh_config_block(sshd))
    d.send(signal.SIGHUP)
    d.wait_for("config_reloaded", 30)
    d.wait_for("remote_up", 30)
    wait_mirrored(src, dst, 30)

    def masters() -> list[int]:
        return ssh_masters(d.proc.pid)
    assert len(masters()) == 1
    write_config(tmp_path, [local, folder], ssh={**ssh_config_block(sshd), "connections": 2})
    d.send(signal.SIGHUP)
    d.wait_for("config_reloaded", 30, count=2)
    wait_until(lambda: len(masters()) == 2, 30, lambda: f"masters: {masters()}")
    (src / "b").write_text("b")
    wait_mirrored(src, dst, 30)
    write_config(tmp_path, [local], ssh=ssh_config_block(sshd))
    d.send(signal.SIGHUP)
    d.wait_for("config_reloaded", 30, count=3)
    wait_until(lambda: masters() == [], 30, lambda: f"masters left after the folder went: {masters()}")
    still_mirroring(d, local_src, local_dst)
    assert d.stop() == 0


def test_sigterm_mid_transfer_stops_rsync_and_publishes_nothing_half_done(tmp_path: Path, sshd: SshServer,
                                                                         daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    config = write_config(tmp_path, [folder], stop_grace="1s", ssh={**ssh_config_block(sshd), "bwlimit": 500})
    d = daemon_factory(config)
    d.wait_ready(60)
    data = os.urandom(4 << 20)
    (src / "big.bin").write_bytes(data)
    wait_until(lambda: any(remote_temps(dst)), 30, "no transfer of big.bin in progress on the remote side")
    tree = descendants(d.proc.pid)
    started = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15
    stopped = d.events("daemon_stopped")[0]
    assert stopped["abandoned"] >= 1, stopped
    wait_until(lambda: not [p for p in tree if os.path.exists(f"/proc/{p}")
                            and b") Z" not in Path(f"/proc/{p}/stat").read_bytes()], 10,
               lambda: f"processes of the daemon left: {tree}")
    big = dst / "big.bin"
    assert not big.exists() or big.read_bytes() == data, "a half-sent big.bin was published"


def test_a_full_remote_disk_fails_the_file_with_enospc_and_the_others_land(tmp_path: Path, sshd: SshServer,
                                                                          daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "small").mkdir()
    (src / "full").mkdir()
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)))
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dst / "full")],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        (src / "full" / "big.bin").write_bytes(os.urandom(3 << 20))
        (src / "small" / "fits").write_text("fits")
        failed = d.wait_for("mirror_failed", 60, path="full/big.bin")[0]
        assert failed["errno"] == "ENOSPC" and failed["will_retry"] is True and failed["fix"], failed
        d.wait_for("file_mirrored", 30, path="small/fits")
        assert not (dst / "full" / "big.bin").exists()
    finally:
        subprocess.run(["umount", str(dst / "full")], check=True)
    wait_mirrored(src, dst, 60)  # retried once there is room (the tmpfs is gone: the disk beneath)
    assert remote_temps(dst) == []
