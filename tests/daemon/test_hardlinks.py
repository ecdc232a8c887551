"""Hard links (`preserve: hardlinks`, the default): names of one source inode are one inode in the mirror.

The oracle (helpers.tree_diff) checks the link groups of both sides on every wait_mirrored.
"""

from __future__ import annotations

import os

import pytest

from helpers import (
    fm,
    link_groups,
    pair,
    remote_pair,
    tree_diff,
    wait_mirrored,
    wait_settled,
    wait_until,
    write_config,
)
from sshd import ssh_config_block


def same_inode(a, b) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@pytest.fixture
def running(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, exclude=["*.skip"])
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    return src, dst, d


def test_a_new_link_is_a_link_in_the_mirror_not_a_copy(running):
    src, dst, d = running
    (src / "sub").mkdir()
    (src / "a").write_bytes(b"x" * 100_000)
    wait_mirrored(src, dst)
    os.link(src / "a", src / "b")            # inotify: IN_CREATE only, no close-write
    os.link(src / "a", src / "sub" / "c")    # in another directory, one not made in the mirror yet
    wait_mirrored(src, dst)
    assert same_inode(dst / "a", dst / "b") and same_inode(dst / "a", dst / "sub" / "c")
    for name in ("b", "sub/c"):  # linked, never copied (to one another, or to a)
        lines = d.wait_for("file_mirrored", path=name)
        assert all(line.get("linked_to") in {"a", "b", "sub/c"} - {name} and line["bytes"] == 0
                   for line in lines), lines
    assert os.lstat(dst / "a").st_nlink == 3


def test_rewrite_in_place_shows_through_every_name_and_delete_keeps_the_others(running):
    src, dst, d = running
    (src / "a").write_bytes(b"first")
    os.link(src / "a", src / "b")
    wait_mirrored(src, dst)
    with open(src / "b", "r+b") as f:        # in place: the same inode, so "a" changes too
        f.write(b"SECOND, longer")
    wait_mirrored(src, dst)                   # compares the bytes of both names
    assert (dst / "a").read_bytes() == b"SECOND, longer" and same_inode(dst / "a", dst / "b")
    os.unlink(src / "a")
    wait_mirrored(src, dst)
    assert (dst / "b").read_bytes() == b"SECOND, longer" and not (dst / "a").exists()


def test_a_renamed_name_keeps_its_link(running):
    src, dst, d = running
    (src / "a").write_bytes(b"linked")
    os.link(src / "a", src / "b")
    (src / "dir").mkdir()
    wait_mirrored(src, dst)
    wait_settled(d.config)                    # a rename whose origin is in flight is a copy + delete
    os.rename(src / "b", src / "dir" / "c")
    wait_mirrored(src, dst)
    assert same_inode(dst / "a", dst / "dir" / "c")
    # And the link holds on: a rewrite through the new name reaches the old.
    with open(src / "dir" / "c", "r+b") as f:
        f.write(b"LINKED")
    wait_mirrored(src, dst)
    assert (dst / "a").read_bytes() == b"LINKED"


def test_a_link_whose_other_name_is_excluded_or_outside_is_a_plain_file(running, tmp_path):
    src, dst, d = running
    (src / "a").write_bytes(b"one")
    os.link(src / "a", src / "a.skip")        # excluded: not mirrored, so not linked to
    outside = tmp_path / "outside"
    outside.write_bytes(b"two")
    os.link(outside, src / "in")              # its other name is outside the folder
    wait_mirrored(src, dst, exclude=lambda p: p.endswith(".skip"))
    assert not (dst / "a.skip").exists()
    assert os.lstat(dst / "a").st_nlink == 1 and os.lstat(dst / "in").st_nlink == 1
    assert d.wait_for("file_mirrored", path="in")[-1].get("linked_to") is None


def linked_tree(src):
    """Three inodes with 2, 3 and 1 names, across directories."""
    (src / "d1").mkdir()
    (src / "d2" / "deep").mkdir(parents=True)
    (src / "a").write_bytes(b"a" * 5000)
    os.link(src / "a", src / "d1" / "a2")
    (src / "d1" / "m").write_bytes(b"three names")
    os.link(src / "d1" / "m", src / "d2" / "m2")
    os.link(src / "d1" / "m", src / "d2" / "deep" / "m3")
    (src / "plain").write_bytes(b"one name")


def test_catch_up_links_what_the_tree_links_and_relinks_a_mirror_made_of_copies(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    linked_tree(src)
    config = write_config(tmp_path, [spec])
    d = daemon_factory(config)
    d.wait_ready()
    d.wait_for("sync_finished", reason="startup")
    assert tree_diff(src, dst) == []
    assert d.stop() == 0
    # A mirror whose names of one inode are copies (made by a tool that does not keep
    # links, or before the folder kept them): the comparison finds them apart.
    os.unlink(dst / "d2" / "m2")
    (dst / "d2" / "m2").write_bytes((dst / "d1" / "m").read_bytes())
    os.utime(dst / "d2" / "m2", ns=(os.lstat(src / "d1" / "m").st_atime_ns, os.lstat(src / "d1" / "m").st_mtime_ns))
    assert tree_diff(src, dst, hardlinks=False) == [] and tree_diff(src, dst) != []
    dry = fm("sync", "--dry-run", "--config", str(config))
    assert dry.returncode == 0 and "d2/m2" in dry.stdout, dry.stdout + dry.stderr
    d2 = daemon_factory(config)
    d2.wait_ready()
    wait_mirrored(src, dst)


def test_sync_links_too_and_preserve_without_hardlinks_copies(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True)
    other_src, other_dst, other = pair(tmp_path, name="copies", delete=True, preserve=["xattrs"])
    linked_tree(src)
    linked_tree(other_src)
    r = fm("sync", "--config", str(write_config(tmp_path, [spec, other])))
    assert r.returncode == 0, r.stderr
    assert tree_diff(src, dst) == []
    assert tree_diff(other_src, other_dst, hardlinks=False) == []
    assert link_groups(other_dst, {"a", "d1/a2", "d1/m", "d2/m2", "d2/deep/m3", "plain"}) == set()


def test_a_burst_of_links_in_one_batch(running):
    """Many names of one inode, and many inodes of two names, all new at once: however the
    batches and workers split them, each inode is one file in the mirror."""
    src, dst, d = running
    for i in range(20):
        (src / f"f{i}").write_bytes(b"%d" % i)
    for n in range(10):
        os.link(src / "f0", src / f"many{n}")
    for i in range(1, 20):
        os.link(src / f"f{i}", src / f"g{i}")
    wait_mirrored(src, dst)
    wait_until(lambda: os.lstat(dst / "f0").st_nlink == 11, 10)


@pytest.mark.timeout(180)
def test_a_remote_target_keeps_links_live_and_at_catch_up(tmp_path, sshd, daemon_factory):
    """rsync -H links only names of one pass: the batch carries the other names along."""
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    linked_tree(src)
    config = write_config(tmp_path, [folder], ssh=ssh_config_block(sshd))
    d = daemon_factory(config)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    # Live: a new link to a file the remote has (alone in its batch), a rewrite in place
    # through one name, a deletion of one name, a rename of one.
    (src / "solo").write_bytes(b"one name first")
    wait_mirrored(src, dst, 30)
    os.link(src / "solo", src / "d2" / "solo2")
    wait_mirrored(src, dst, 30)
    lines = d.wait_for("file_mirrored", 10, path="d2/solo2")
    assert all(line.get("linked_to") == "solo" and line["bytes"] == 0 for line in lines), lines
    with open(src / "d1" / "a2", "r+b") as f:
        f.write(b"REWRITTEN")
    wait_mirrored(src, dst, 30)
    os.unlink(src / "d1" / "m")
    wait_mirrored(src, dst, 30)
    wait_settled(config)
    os.rename(src / "d2" / "m2", src / "m4")
    wait_mirrored(src, dst, 30)
    assert d.stop() == 0
    # At catch-up: a mirror made of copies is linked.
    os.unlink(dst / "d2" / "solo2")
    (dst / "d2" / "solo2").write_bytes((dst / "solo").read_bytes())
    st = os.lstat(src / "solo")
    os.utime(dst / "d2" / "solo2", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tree_diff(src, dst) != []
    d2 = daemon_factory(config)
    d2.wait_ready(60)
    wait_mirrored(src, dst, 30)
