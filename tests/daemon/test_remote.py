"""Remote targets end to end: a real daemon mirrors over a real OpenSSH server on 127.0.0.1
(tests/sshd.py) with rsync, and the remote tree (here on this machine) is compared with
the source by the same oracle as a local target's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import temps, tree_diff, wait_mirrored, wait_until, write_config
from sshd import SshServer, ssh_config_block

pytestmark = pytest.mark.timeout(180)


def remote_pair(tmp_path: Path, server: SshServer, name: str = "data", **opts: object) -> tuple[Path, Path, dict]:
    src, dst = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
    src.mkdir()
    return src, dst, {"name": name, "source": str(src), "target": server.url(str(dst)), **opts}


def rsync_temps(root: Path) -> list[str]:
    """rsync's own temp files (.NAME.XXXXXX) and the daemon's, anywhere under root."""
    found = temps(root)
    for dirpath, _dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(".") and len(f) > 8 and f[-7] == "."]
    return found


def test_a_remote_target_is_mirrored_live_and_at_start(tmp_path: Path, sshd: SshServer, daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "before.txt").write_text("there before the start")
    (src / "sub").mkdir()
    (src / "sub" / "deep.bin").write_bytes(os.urandom(100_000))
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd), log={"level": "debug"}))
    d.wait_for("remote_up", 30)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    # Live: create, replace, odd names, delete, a directory tree gone, a rename.
    (src / "new.txt").write_text("new")
    (src / "before.txt").write_text("replaced")
    odd = ["with\nnewline", "-leading-dash", "spa ce", os.fsdecode(b"latin-\xe9")]
    for name in odd:
        (src / name).write_bytes(os.fsencode(name))
    (src / "sub" / "deep.bin").unlink()
    (src / "sub").rmdir()
    wait_mirrored(src, dst, 30)
    (src / "new.txt").rename(src / "renamed.txt")
    wait_mirrored(src, dst, 30)
    renamed = d.wait_for("file_mirrored", 10, path="renamed.txt")
    assert renamed[-1].get("renamed_from") == "new.txt", renamed
    deleted = {e["path"] for e in d.events("file_deleted")}
    assert {"sub", "sub/deep.bin"} <= deleted, d.tail()
    assert rsync_temps(dst) == []
    assert d.stop() == 0
    assert tree_diff(src, dst) == []


def test_a_remote_folder_waits_while_its_host_is_down_and_catches_up(tmp_path: Path, sshd: SshServer,
                                                                       daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "a").write_text("a")
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "keepalive": "1s",
                                                   "retry_min": "250ms", "retry_max": "1s"})
    d = daemon_factory(config)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    sshd.stop()
    line = d.wait_for("remote_down", 30)[0]
    assert line["retry_in_s"] > 0 and line["fix"], line
    for i in range(20):
        (src / f"while-down-{i}").write_text(str(i))
    (src / "a").unlink()
    d.wait_for("remote_retry", 30)
    sshd.restart()
    d.wait_for("remote_up", 30, reconnect=True)
    wait_mirrored(src, dst, 60)
    assert rsync_temps(dst) == []
    assert d.stop() == 0


def test_sync_to_a_remote_target_and_its_dry_run(tmp_path: Path, sshd: SshServer):
    from helpers import fm
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "x").write_text("x")
    (src / "d").mkdir()
    (src / "d" / "y").write_text("y")
    config = write_config(tmp_path, [folder], ssh=ssh_config_block(sshd))
    dry = fm("sync", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "copy  x" in dry.stdout and "copy  d/y" in dry.stdout, dry.stdout
    done = fm("sync", "--config", str(config), "--log-format", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree_diff(src, dst) == []
    dry = fm("sync", "--dry-run", "--config", str(config))
    assert "in sync" in dry.stdout, dry.stdout


def test_a_remote_target_without_its_host_key_is_refused_by_check(tmp_path: Path, sshd: SshServer):
    from helpers import fm
    _, _, folder = remote_pair(tmp_path, sshd)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "known_hosts": str(empty)})
    done = fm("check", "--config", str(config))
    assert done.returncode != 0
    assert "ssh-keyscan" in done.stdout + done.stderr, done.stdout + done.stderr
    wait_until(lambda: True, 1)
