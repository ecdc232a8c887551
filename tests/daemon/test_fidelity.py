"""What a mirror keeps (preserve:) with a real daemon on real files: xattrs (user.* and, as
root, trusted.* and security.capability), POSIX ACLs (setfacl), holes, owners; live, at
catch-up and in `sync`; a change of metadata alone mirrored without copying the data; a
target file system that refuses xattrs; owners a non-root daemon cannot keep; remote targets
over rsync -X -A -S -o -g."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import (
    IS_ROOT,
    fm,
    pair,
    remote_pair,
    setpriv_or_skip,
    tree_diff,
    wait_mirrored,
    wait_until,
    write_config,
)
from sshd import SshServer, ssh_config_block

pytestmark = pytest.mark.timeout(120)
KEPT = ("xattrs", "acls", "sparse", "owner")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="trusted.*, security.*, chown and mounts need root")
needs_acl = pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl missing (apt-get install acl)")
# A file capability as setcap cap_net_raw+ep writes it: VFS_CAP_REVISION_2, permitted bit 13.
CAP = bytes.fromhex("01000002") + (1 << 13).to_bytes(4, "little") + bytes(12)


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True, timeout=10)


def sparse_file(path: Path, size: int = 64 << 20) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size // 2)
        f.write(b"an island of data")


def rich_tree(root: Path) -> None:
    """One of each thing a mirror may keep."""
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text("tagged")
    os.setxattr(root / "docs" / "a.txt", "user.tag", b"blue")
    os.setxattr(root / "docs", "user.dir", b"d")
    (root / "shared.txt").write_text("shared")
    setfacl("-m", "u:1234:rw", str(root / "shared.txt"))
    setfacl("-d", "-m", "g:555:rx", str(root / "docs"))
    sparse_file(root / "disk.img")
    if IS_ROOT:
        (root / "tool").write_bytes(b"#!/bin/sh\n")
        os.chmod(root / "tool", 0o755)
        os.chown(root / "tool", 1234, 4321)
        os.setxattr(root / "tool", "trusted.origin", b"ci")
        os.setxattr(root / "tool", "security.capability", CAP)
        os.symlink("tool", root / "link")
        os.lchown(root / "link", 1234, 4321)


@needs_acl
def test_everything_kept_at_catch_up_and_live_and_metadata_alone_is_not_a_copy(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    rich_tree(src)
    d = daemon_factory(write_config(tmp_path, [spec]))  # preserve: its default, everything
    d.wait_ready()
    wait_mirrored(src, dst, preserve=KEPT)
    assert os.stat(dst / "disk.img").st_blocks < 64, "the hole was filled"

    # Live: new files carrying each property.
    (src / "new").mkdir()
    (src / "new" / "b.txt").write_text("new")
    os.setxattr(src / "new" / "b.txt", "user.k", b"v")
    (src / "new" / "c.txt").write_text("acl")
    setfacl("-m", "u:1234:rw", str(src / "new" / "c.txt"))
    if IS_ROOT:
        os.chown(src / "new" / "c.txt", 2000, 2001)
    sparse_file(src / "new" / "vm.img", 32 << 20)
    wait_mirrored(src, dst, preserve=KEPT)

    # Metadata alone, each kind in turn: mirrored in place (IN_ATTRIB), the inode kept, 0 bytes.
    ino = os.stat(dst / "docs" / "a.txt").st_ino
    before = len(d.events("file_mirrored", path="docs/a.txt"))
    os.setxattr(src / "docs" / "a.txt", "user.tag", b"green")
    wait_mirrored(src, dst, preserve=KEPT)
    setfacl("-m", "u:4321:r", str(src / "docs" / "a.txt"))
    wait_mirrored(src, dst, preserve=KEPT)
    os.chmod(src / "docs" / "a.txt", 0o600)
    wait_mirrored(src, dst, preserve=KEPT)
    if IS_ROOT:
        os.chown(src / "docs" / "a.txt", 777, 778)
        wait_mirrored(src, dst, preserve=KEPT)
    assert os.stat(dst / "docs" / "a.txt").st_ino == ino, "the data was copied again"
    lines = d.wait_for("file_mirrored", count=before + 1, path="docs/a.txt")[before:]
    assert all(line["bytes"] == 0 for line in lines), lines
    # A directory's attributes and ACL too.
    setfacl("-d", "-m", "u:99:r", str(src / "docs"))
    os.setxattr(src / "docs", "user.dir", b"changed")
    wait_mirrored(src, dst, preserve=KEPT)
    assert d.proc.poll() is None
    d.stop()

    # Changed while the daemon was down: the start-up comparison sees metadata-only differences.
    os.setxattr(src / "shared.txt", "user.late", b"1")
    setfacl("-x", "u:1234", str(src / "shared.txt"))
    d2 = daemon_factory(write_config(tmp_path, [spec]))
    d2.wait_ready()
    wait_mirrored(src, dst, preserve=KEPT)
    assert d2.events("sync_finished")[0]["differences"] >= 1


@needs_acl
def test_a_default_acl_on_the_target_changes_no_mirrored_mode(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    dst.mkdir()
    setfacl("-d", "-m", "u:99:rwx,g::rwx,o::rwx", str(dst))
    (src / "before.txt").write_text("b")
    os.chmod(src / "before.txt", 0o600)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    (src / "sub").mkdir(mode=0o750)
    (src / "sub" / "live.txt").write_text("l")
    os.chmod(src / "sub" / "live.txt", 0o640)
    wait_mirrored(src, dst, preserve=KEPT)
    for rel, mode in (("before.txt", 0o600), ("sub/live.txt", 0o640), ("sub", 0o750)):
        assert stat.S_IMODE(os.stat(dst / rel).st_mode) == mode, rel
        assert not [n for n in os.listxattr(dst / rel) if n.startswith("system.posix_acl")], rel


@needs_acl
def test_sync_keeps_them_and_preserve_nothing_keeps_none(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True)
    rich_tree(src)
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 0, r.stderr
    assert tree_diff(src, dst, preserve=KEPT) == []
    os.setxattr(src / "docs" / "a.txt", "user.tag", b"sync again")
    dry = fm("sync", "--dry-run", "--config", str(write_config(tmp_path, [spec])))
    assert "metadata only" in dry.stdout and "docs/a.txt" in dry.stdout, dry.stdout
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 0, r.stderr
    assert tree_diff(src, dst, preserve=KEPT) == []

    src2, dst2, bare = pair(tmp_path, "bare", delete=True, preserve=[])
    rich_tree(src2)
    r = fm("sync", "--config", str(write_config(tmp_path, [bare])))
    assert r.returncode == 0, r.stderr
    assert tree_diff(src2, dst2) == []
    assert os.listxattr(dst2 / "docs" / "a.txt") == [] and os.stat(dst2 / "disk.img").st_blocks > 100_000
    assert "owner_not_kept" not in r.stderr and "preserve_unsupported" not in r.stderr


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None, reason="util-linux missing")
def test_a_target_that_refuses_xattrs_gets_one_warning_and_every_file(tmp_path, daemon_factory):
    """The target is a ramfs (no extended attributes at all), mounted in a mount namespace of
    the daemon's own; the test reads it through nsenter."""
    src, dst, spec = pair(tmp_path, delete=True)
    dst.mkdir()
    for i in range(5):
        (src / f"f{i}").write_text(str(i))
        os.setxattr(src / f"f{i}", "user.tag", b"x")
    mount = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t ramfs fm-test "$0" && exec "$@"', str(dst)]
    d = daemon_factory(write_config(tmp_path, [spec]), prefix=mount)
    d.wait_ready()
    (src / "live").write_text("live")
    os.setxattr(src / "live", "user.tag", b"y")

    def listed() -> list[str]:
        r = subprocess.run(["nsenter", f"--target={d.proc.pid}", "--mount", "ls", str(dst)], capture_output=True,
                           text=True, timeout=10)
        return sorted(r.stdout.split())

    wanted = {"f0", "f1", "f2", "f3", "f4", "live"}
    wait_until(lambda: set(listed()) >= wanted, 30, lambda: f"{listed()}\n{d.tail()}")
    warned = d.events("preserve_unsupported")
    assert len(warned) == 1, d.tail()
    assert warned[0]["folder"] == "data" and warned[0]["unsupported"] == ["xattrs", "acls"]
    assert str(dst) in warned[0]["error"] and warned[0]["fix"]
    assert not d.events("mirror_failed"), d.tail()
    mirrored = len(d.wait_for("file_mirrored", count=6))
    # A comparison does not see the attributes it cannot keep as differences, again and again.
    assert fm("rescan", "--config", str(d.config)).returncode == 0
    d.wait_for("sync_finished", reason="requested")
    assert len(d.events("file_mirrored")) == mirrored, d.tail()
    assert d.events("sync_finished", reason="requested")[0]["differences"] == 0, d.tail()


def test_a_daemon_that_cannot_chown_says_so_once_and_mirrors_everything(tmp_path, daemon_factory):
    """uid 0 without CAP_CHOWN (the bounding set without it), as the units' service user is
    without it: owners are not kept, one info line says so, nothing is said per file."""
    prefix = setpriv_or_skip()
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(3):
        (src / f"f{i}").write_text(str(i))
    os.chown(src / "f0", 1234, 1234)
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])), prefix=prefix)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    notes = [x for x in lines if x["event"] == "owner_not_kept"]
    assert len(notes) == 1 and notes[0]["level"] == "info" and notes[0]["folder"] == "data", lines
    assert not [x for x in lines if x["level"] in ("warning", "error")], lines
    assert tree_diff(src, dst, preserve=("xattrs", "acls", "sparse")) == []
    assert os.stat(dst / "f0").st_uid == 0
    # The daemon too: one line at start, files mirrored live.
    d = daemon_factory(write_config(tmp_path, [spec]), prefix=prefix)
    d.wait_ready()
    (src / "live").write_text("live")
    os.chown(src / "live", 1234, 1234)
    wait_mirrored(src, dst, preserve=("xattrs", "acls", "sparse"))
    assert len(d.events("owner_not_kept")) == 1 and not d.events("mirror_failed"), d.tail()


@needs_acl
def test_a_remote_target_keeps_them_over_rsync(tmp_path, sshd: SshServer, daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    rich_tree(src)
    (src / "link").unlink(missing_ok=True)  # rsync -X as root would keep its trusted.* too, but the
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)))  # oracle is per-OS
    d.wait_for("remote_up", 30)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30, preserve=KEPT)
    assert os.stat(dst / "disk.img").st_blocks < 1024
    os.setxattr(src / "docs" / "a.txt", "user.tag", b"remote live")
    setfacl("-m", "u:4321:r", str(src / "shared.txt"))
    sparse_file(src / "live.img", 16 << 20)
    wait_mirrored(src, dst, 30, preserve=KEPT)
    assert not d.events("preserve_unsupported") and not d.events("owner_not_kept"), d.tail()
    d.stop()
    # Metadata alone, changed while the daemon was down: rsync's dry run (-X -A) lists it.
    os.setxattr(src / "shared.txt", "user.late", b"1")
    setfacl("-x", "u:4321", str(src / "shared.txt"))
    d2 = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)))
    d2.wait_ready(60)
    wait_mirrored(src, dst, 30, preserve=KEPT)


RSYNC_WITHOUT = """#!/bin/sh
# rsync as if built without ACL and xattr support (its --version says so); otherwise the real one
if [ "$1" = --version ]; then rsync --version | sed 's/ACLs,/no ACLs,/; s/ xattrs,/ no xattrs,/'; exit; fi
exec rsync "$@"
"""
RSYNC_ON_RAMFS = """#!/bin/sh
# the receiving rsync writes into a ramfs (no extended attributes) mounted over the target in a
# mount namespace of its own, so what it receives vanishes with it: only its errors matter here
case " $* " in *" --server "*)
    exec unshare --mount --propagation private sh -c 'mount -t ramfs fm-test "$0" && exec rsync "$@"' "$TARGET" "$@";;
esac
exec rsync "$@"
"""


@needs_root
@pytest.mark.parametrize("remote_side", ["rsync without ACLs and xattrs", "file system without xattrs"])
def test_what_a_remote_cannot_keep_is_said_once_at_link_up(tmp_path, sshd: SshServer, daemon_factory, remote_side):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    dst.mkdir()
    wrapper = tmp_path / "rsync-wrapper"
    script = RSYNC_WITHOUT if remote_side.startswith("rsync") else RSYNC_ON_RAMFS.replace("$TARGET", str(dst))
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    for i in range(3):
        (src / f"f{i}").write_text(str(i))
        os.setxattr(src / f"f{i}", "user.tag", b"t")
    d = daemon_factory(write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "rsync_path": str(wrapper)}))
    d.wait_for("remote_up", 30)
    d.wait_ready(60)
    (src / "live").write_text("live")
    os.setxattr(src / "live", "user.tag", b"t")
    d.wait_for("file_mirrored", 30, path="live")
    warned = d.events("preserve_unsupported")
    assert len(warned) == 1 and warned[0]["unsupported"] == ["xattrs", "acls"], d.tail()
    said = "built without" if remote_side.startswith("rsync") else "refuses"
    assert said in warned[0]["error"] and warned[0]["fix"] and warned[0]["target"] == folder["target"], warned
    assert not d.events("mirror_failed"), d.tail()
    if remote_side.startswith("rsync"):  # the files are there, without what could not be kept
        wait_mirrored(src, dst, 30)
        assert os.listxattr(dst / "live") == []
