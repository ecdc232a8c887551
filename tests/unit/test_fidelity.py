"""What a mirror keeps beside bytes, mode and mtime (pipeline/fidelity.py), on real files:
xattrs, POSIX ACLs (setfacl/getfacl from Debian's acl package), holes, owners; the copier and
the comparison using them; rsync's flags and what a remote cannot keep."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from foldermirror.catchup.compare import diff_tree
from foldermirror.paths import Excluder
from foldermirror.pipeline import fidelity
from foldermirror.pipeline.copier import Mirror, SourceTree
from foldermirror.pipeline.fidelity import ACL_ACCESS, ACL_DEFAULT, Keep, copy_sparse, is_sparse, keep_for
from foldermirror.pipeline.records import Status
from foldermirror.pipeline.targets import ROOT_FLAGS, LocalTarget
from foldermirror.remote import probe, rsync
from helpers import ENV, IS_ROOT, tree_diff

pytestmark = pytest.mark.timeout(60)
ALL = ("xattrs", "acls", "sparse", "owner")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="trusted.*, security.* and chown need root")
needs_acl = pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl missing (apt-get install acl)")


def mirror_of(src: Path, dst: Path, preserve: tuple[str, ...] = ALL) -> Mirror:
    keep = keep_for(preserve)
    return Mirror(SourceTree(os.open(src, ROOT_FLAGS)),
                  LocalTarget(str(dst), delete=True, durable=False, instance="t", keep=keep), delete=True, keep=keep)


def close(m: Mirror) -> None:
    m.source.close()
    m.target.close()


def acl(path: Path) -> str:
    """getfacl's entries, without its comment header."""
    out = subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.strip()


def test_holes_stay_holes_and_the_bytes_are_the_same(tmp_path):
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"middle" * 1000)
        f.seek((64 << 20) - 5)
        f.write(b"tail!")
    st = os.stat(src)
    assert is_sparse(st)
    dst = tmp_path / "copy"
    with open(src, "rb") as s, open(dst, "w+b") as t:
        assert copy_sparse(s.fileno(), t.fileno(), st.st_size) == st.st_size
    assert dst.read_bytes() == src.read_bytes()
    assert abs(os.stat(dst).st_blocks - st.st_blocks) <= 16, (os.stat(dst).st_blocks, st.st_blocks)


def test_a_file_of_only_a_hole_and_a_dense_file(tmp_path):
    hole = tmp_path / "hole"
    hole.write_bytes(b"")
    os.truncate(hole, 1 << 20)
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(100_000))
    assert not is_sparse(os.stat(dense))  # takes the plain in-kernel copy
    with open(hole, "rb") as s, open(tmp_path / "c", "w+b") as t:
        assert copy_sparse(s.fileno(), t.fileno(), 1 << 20) == 1 << 20
    assert os.stat(tmp_path / "c").st_size == 1 << 20 and os.stat(tmp_path / "c").st_blocks == 0


def test_a_sparse_file_is_mirrored_sparse_only_when_kept(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(100 << 20)
        f.write(b"boot")
    for preserve, far in ((ALL, False), ((), True)):
        shutil.rmtree(dst, ignore_errors=True)
        m = mirror_of(src, dst, preserve)
        try:
            assert m.sync("disk.img").status is Status.COPIED
        finally:
            close(m)
        blocks = os.stat(dst / "disk.img").st_blocks
        assert (blocks > 100_000) is far, (preserve, blocks)
    assert tree_diff(src, dst, preserve=()) == []


def test_user_xattrs_are_kept_and_ones_the_source_lacks_go(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    (src / "d").mkdir(parents=True)
    (src / "f").write_text("x")
    os.setxattr(src / "f", "user.tag", b"blue")
    os.setxattr(src / "d", "user.dir", b"yes")
    m = mirror_of(src, dst)
    try:
        assert [o.status for o in m.mirror("d", None)] == [Status.COPIED]
        m.sync("f")
        assert os.getxattr(dst / "f", "user.tag") == b"blue" and os.getxattr(dst / "d", "user.dir") == b"yes"
        assert tree_diff(src, dst, preserve=ALL) == []
        # Only the attribute changes: set in place, the data not copied again (same inode).
        ino = os.stat(dst / "f").st_ino
        os.removexattr(src / "f", "user.tag")
        os.setxattr(src / "f", "user.other", b"1")
        done = m.sync("f")
        assert (done.status, done.bytes) == (Status.COPIED, 0)
        assert os.stat(dst / "f").st_ino == ino
        assert os.listxattr(dst / "f") == ["user.other"]
        assert m.sync("f").status is Status.UNCHANGED
    finally:
        close(m)


def test_nothing_is_kept_when_the_folder_keeps_nothing(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    (src / "f").write_text("x")
    os.setxattr(src / "f", "user.tag", b"blue")
    m = mirror_of(src, dst, ())
    try:
        m.sync("f")
    finally:
        close(m)
    assert os.listxattr(dst / "f") == []
    assert tree_diff(src, dst) == [] and tree_diff(src, dst, preserve=("xattrs",)) != []


def test_a_mode_change_alone_is_not_a_copy(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(5000))
    m = mirror_of(src, dst, ())
    try:
        m.sync("f")
        ino = os.stat(dst / "f").st_ino
        os.chmod(src / "f", 0o640)
        done = m.sync("f")
        assert (done.status, done.bytes) == (Status.COPIED, 0) and os.stat(dst / "f").st_ino == ino
        assert stat.S_IMODE(os.stat(dst / "f").st_mode) == 0o640
    finally:
        close(m)


@needs_root
def test_as_root_trusted_and_security_attributes_and_owners_are_kept(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "tool", 0o755)
    os.setxattr(src / "tool", "trusted.origin", b"build-7")
    # A file capability (what setcap cap_net_raw+ep writes): version 2, permitted bit 13.
    cap = bytes.fromhex("01000002") + (1 << 13).to_bytes(4, "little") + bytes(12)
    os.setxattr(src / "tool", "security.capability", cap)
    os.chown(src / "tool", 1234, 4321)  # drops the capability, as the kernel does: set it again
    os.setxattr(src / "tool", "security.capability", cap)
    os.symlink("tool", src / "link")
    os.setxattr(src / "link", "trusted.l", b"on the link", follow_symlinks=False)
    os.lchown(src / "link", 1234, 4321)
    m = mirror_of(src, dst)
    try:
        m.sync("tool")
        m.sync("link")
        assert os.getxattr(dst / "tool", "security.capability") == cap
        assert os.getxattr(dst / "link", "trusted.l", follow_symlinks=False) == b"on the link"
        assert (os.lstat(dst / "link").st_uid, os.stat(dst / "tool").st_gid) == (1234, 4321)
        assert tree_diff(src, dst, preserve=ALL) == []
        # The owner alone changes: chowned in place, the capability set again after it.
        os.chown(src / "tool", 1000, 1000)
        os.setxattr(src / "tool", "security.capability", cap)
        assert (m.sync("tool").bytes, os.stat(dst / "tool").st_uid) == (0, 1000)
        assert os.getxattr(dst / "tool", "security.capability") == cap
        assert tree_diff(src, dst, preserve=ALL) == []
        # A symlink's owner alone (chown -h): found by the comparison, set in place.
        os.lchown(src / "link", 55, 56)
        found = {d.path: d.reason for d in diff_tree(str(src), str(dst), Excluder(()), True, "t", preserve=ALL)}
        assert found == {"link": "metadata"}
        assert (m.sync("link").bytes, os.lstat(dst / "link").st_uid) == (0, 55)
        assert tree_diff(src, dst, preserve=ALL) == []
    finally:
        close(m)


@needs_acl
def test_acls_are_kept_and_a_target_default_acl_changes_no_mode(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    (src / "shared").mkdir(parents=True)
    dst.mkdir()
    (src / "plain").write_text("p")
    os.chmod(src / "plain", 0o640)
    (src / "granted").write_text("g")
    subprocess.run(["setfacl", "-m", "u:1234:rw", str(src / "granted")], check=True, timeout=10)
    subprocess.run(["setfacl", "-d", "-m", "g:555:rx", str(src / "shared")], check=True, timeout=10)
    # The target directory's default ACL would give every new file an ACL and widen it.
    subprocess.run(["setfacl", "-d", "-m", "u:99:rwx,o::rwx", str(dst)], check=True, timeout=10)
    m = mirror_of(src, dst)
    try:
        for path in ("shared", "plain", "granted"):
            m.sync(path)
    finally:
        close(m)
    assert acl(dst / "granted") == acl(src / "granted")
    assert acl(dst / "shared") == acl(src / "shared")
    assert ACL_ACCESS not in os.listxattr(dst / "plain")
    assert stat.S_IMODE(os.stat(dst / "plain").st_mode) == 0o640
    assert ACL_DEFAULT in os.listxattr(dst / "shared") and ACL_ACCESS not in os.listxattr(dst / "shared")
    assert tree_diff(src, dst, preserve=ALL) == []


def test_the_comparison_sees_attributes_and_owners_only_when_kept(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    (src / "f").write_text("x")
    (src / "d").mkdir()
    m = mirror_of(src, dst)
    try:
        m.mirror("d", None)
        m.sync("f")
    finally:
        close(m)

    def found(preserve: tuple[str, ...]) -> dict[str, str]:
        return {d.path: d.reason for d in diff_tree(str(src), str(dst), Excluder(()), True, "t", preserve=preserve)}

    assert found(ALL) == {}
    os.setxattr(src / "f", "user.new", b"1")
    os.setxattr(src / "d", "user.new", b"1")
    assert found(ALL) == {"f": "metadata", "d": "metadata"}
    assert found(("sparse",)) == {}
    if IS_ROOT:
        os.setxattr(dst / "f", "user.new", b"1")
        os.setxattr(dst / "d", "user.new", b"1")
        os.chown(src / "f", 1234, 1234)
        assert found(ALL) == {"f": "metadata"}
        assert found(("xattrs",)) == {}


def _run_as(uid: int, code: str, *caps: str) -> str:
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if caps:
        setpriv += [f"--inh-caps={','.join('+' + c for c in caps)}", f"--ambient-caps={','.join('+' + c for c in caps)}"]
    done = subprocess.run([*setpriv, sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env=ENV, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_owners_are_kept_by_root_or_with_cap_chown_only():
    code = "from foldermirror.pipeline.fidelity import keep_for; print(keep_for(('owner', 'xattrs')))"
    assert "owner=False" in _run_as(65534, code) and "privileged=False" in _run_as(65534, code)
    assert "owner=True" in _run_as(65534, code, "chown")
    fidelity.may_chown.cache_clear()
    assert keep_for(("owner",)).owner


def test_symlinks_keep_no_user_attributes_nor_acls():
    keep = Keep(xattrs=True, acls=True, privileged=True)
    assert not keep.wanted("user.x", symlink=True) and not keep.wanted(ACL_ACCESS, symlink=True)
    assert keep.wanted("trusted.x", symlink=True) and keep.wanted("user.x")
    assert not Keep(xattrs=True).wanted("security.capability")  # not root: the kernel would refuse
    assert not keep.wanted("system.nfs4_acl")


# -- remote: rsync's flags and what the remote says --------------------------------------------
def test_preserve_maps_to_rsync_flags():
    words = rsync.argv(mode=rsync.Mode.TRANSFER, source_root="/s", host="h", remote_root="/r",
                       keep=("xattrs", "acls", "sparse"), preserve_owner=True)
    assert {"-X", "-A", "-S", "-o", "-g"} <= set(words)
    plain = rsync.argv(mode=rsync.Mode.TRANSFER, source_root="/s", host="h", remote_root="/r")
    assert not {"-X", "-A", "-S", "-o", "-g"} & set(plain)


def test_what_an_rsync_build_lacks_is_read_from_its_capabilities():
    full = ("rsync  version 3.2.7  protocol version 31\nCapabilities:\n    64-bit files, socketpairs, "
            "hardlinks,\n    inplace, append, ACLs, xattrs, iconv, prealloc\nOptimizations:\n")
    assert rsync.lacks(full) == []
    assert rsync.lacks(full.replace("ACLs", "no ACLs").replace("xattrs", "no xattrs")) == ["xattrs", "acls"]
    assert rsync.lacks("rsync version 2.6.9") == []  # not said: rsync's errors will say it


def test_what_a_remote_file_system_refused_is_read_from_rsyncs_errors():
    err = ('rsync: [receiver] rsync_xal_set: lsetxattr(""/r/.fm.tmp"","user.foldermirror-probe") failed: '
           'Operation not supported (95)\n'
           'rsync: [receiver] set_acl: sys_acl_set_file(.fm.tmp, ACL_TYPE_ACCESS): Operation not supported (95)\n'
           'rsync error: some files/attrs were not transferred (see previous errors) (code 23)\n')
    refused, said = probe.refused_in(err, ["xattrs", "acls"])
    assert refused == ["xattrs", "acls"] and "lsetxattr" in said
    assert probe.refused_in(err, ["acls"])[0] == ["acls"]
    assert probe.refused_in("", ["xattrs"]) == ([], "")


@pytest.mark.parametrize("busy", [True, False])
def test_a_sparse_file_appended_to_during_its_copy_keeps_the_busy_file_rules(tmp_path, monkeypatch, busy):
    """As for a dense file: busy, the prefix it had when the copy began is published (holes
    kept); not busy, nothing is published and the path is looked at again."""
    from foldermirror.pipeline import copier

    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    with open(src / "log.img", "wb") as f:
        f.truncate(8 << 20)
        f.write(b"head")
    before = (src / "log.img").read_bytes()
    real = copier.copy_sparse

    def appended_meanwhile(sfd: int, tfd: int, size: int) -> int:
        done = real(sfd, tfd, size)
        with open(src / "log.img", "ab") as f:
            f.write(b"appended")
        return done

    monkeypatch.setattr(copier, "copy_sparse", appended_meanwhile)
    m = mirror_of(src, dst)
    try:
        done = m.sync("log.img", busy=busy)
    finally:
        close(m)
    if busy:
        assert (done.status, done.bytes) == (Status.COPIED, 8 << 20)
        assert (dst / "log.img").read_bytes() == before and os.stat(dst / "log.img").st_blocks < 256
    else:
        assert done.status is Status.CHANGED and not (dst / "log.img").exists()
