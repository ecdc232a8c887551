"""Exclude patterns against a real daemon: gitignore's rules live and at catch-up, exclude_from,
reloads that change what is excluded, excluded paths kept in the target, and remote targets.

The oracle is an explicit list of the paths each rule excludes, not the daemon's matcher.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from helpers import (
    fm,
    pair,
    remote_pair,
    setpriv_or_skip,
    tree_diff,
    wait_mirrored,
    wait_settled,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

# One rule each; the exclude_from file adds a negation and the un-excludable reserved names.
EXCLUDE = ["*.tmp", "!keep.tmp", "/top.txt", "docs/*.pdf", "cache/", "**/*.log", "a/**/z"]
EXCLUDE_FROM = "# gitignore format\n\n!important.log\n!.foldermirror-*\n"
RESERVED = ".foldermirror-abcd1234-1-000000000001.tmp"  # a temp file's shape: never mirrored

FILES = [
    "keep.tmp", "x.tmp", "sub/x.tmp",            # negation: keep.tmp comes back
    "top.txt", "sub/top.txt",                    # anchored at the root
    "docs/a.pdf", "docs/a/b.pdf",                # `*` stays within one name
    "cache/x", "src/cache/x", "other/cache",     # directories named cache only, at any depth
    "c.log", "x/y/c.log", "important.log",       # `**/` at any depth; exclude_from's ! wins
    "a/z", "a/b/z", "a/zz",                      # `/**/` is zero or more directories
    RESERVED, "plain.txt",
]
EXCLUDED = {"x.tmp", "sub/x.tmp", "top.txt", "docs/a.pdf", "cache", "cache/x", "src/cache", "src/cache/x",
            "c.log", "x/y/c.log", "a/z", "a/b/z", RESERVED}


def excluded(rel: str) -> bool:
    return rel in EXCLUDED


def write_tree(root: Path, files: list[str] = FILES) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())


def filtered_pair(tmp_path: Path, **opts):
    (tmp_path / "rules.ignore").write_text(EXCLUDE_FROM)
    return pair(tmp_path, delete=True, exclude=EXCLUDE, exclude_from=["rules.ignore"], **opts)


def assert_filtered(src: Path, dst: Path) -> None:
    assert tree_diff(src, dst, exclude=excluded) == []
    present = {str(p.relative_to(dst)) for p in dst.rglob("*")}
    assert not present & EXCLUDED, sorted(present & EXCLUDED)
    assert {"keep.tmp", "sub/top.txt", "docs/a/b.pdf", "other/cache", "important.log", "a/zz"} <= present


def test_catch_up_honours_every_rule(tmp_path, daemon_factory):
    src, dst, spec = filtered_pair(tmp_path)
    write_tree(src)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    assert_filtered(src, dst)
    changed = d.wait_for("exclude_meaning_changed")[0]
    assert changed["folder"] == "data" and changed["fix"] and changed["level"] == "warning"
    assert changed["patterns"] == ["!keep.tmp", "docs/*.pdf", "cache/", "**/*.log", "a/**/z"], changed
    assert not any(r["path"] in EXCLUDED for r in d.events("file_mirrored"))


def test_live_events_honour_every_rule(tmp_path, daemon_factory):
    src, dst, spec = filtered_pair(tmp_path)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    write_tree(src)
    # A directory moved in whole, and a file renamed onto an excluded name and back out of one.
    write_tree(tmp_path / "outside", ["cache/y", "keep/c.log", "keep/fine"])
    os.rename(tmp_path / "outside", src / "moved")
    (src / "plain.txt").rename(src / "now.tmp")
    (src / "x.tmp").rename(src / "was-excluded.txt")
    EXCLUDED.update({"moved/cache", "moved/cache/y", "moved/keep/c.log", "now.tmp"})
    try:
        wait_mirrored(src, dst, exclude=excluded)
        wait_settled(d.config)
        assert_filtered(src, dst)
        assert (dst / "was-excluded.txt").exists() and (dst / "moved" / "keep" / "fine").exists()
    finally:
        EXCLUDED.difference_update({"moved/cache", "moved/cache/y", "moved/keep/c.log", "now.tmp"})


def test_excluded_paths_in_the_target_are_never_deleted(tmp_path, daemon_factory):
    src, dst, spec = filtered_pair(tmp_path)
    write_tree(src, ["plain.txt", "x.tmp", "src/cache/x"])
    # The target holds excluded paths the source lacks, and ones it has (mirrored before).
    # docs/ is only in the target: it stays, as it holds an excluded file; docs/gone.txt goes.
    write_tree(dst, ["old.tmp", "docs/a.pdf", "docs/gone.txt", "cache/blob", "src/cache/x", "x.tmp", "c.log",
                     "extra.txt"])
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    wait_until(lambda: not (dst / "extra.txt").exists() and not (dst / "docs" / "gone.txt").exists(), 30,
               "the extra, not excluded, files are deleted")
    for rel in ("old.tmp", "docs/a.pdf", "cache/blob", "src/cache/x", "x.tmp", "c.log"):
        assert (dst / rel).exists(), rel
    # Deleted in the source, live: the target's copy of an excluded path stays too.
    (src / "x.tmp").unlink()
    (src / "src" / "cache" / "x").unlink()
    (src / "src" / "cache").rmdir()
    (src / "plain.txt").unlink()
    wait_until(lambda: not (dst / "plain.txt").exists(), 30, "the deletion of plain.txt is replayed")
    assert fm("rescan", "--config", str(d.config)).returncode == 0
    d.wait_for("sync_finished", reason="requested")
    wait_settled(d.config)
    for rel in ("old.tmp", "docs/a.pdf", "cache/blob", "src/cache/x", "x.tmp", "c.log"):
        assert (dst / rel).exists(), rel
    assert not any(r["path"] in ("x.tmp", "src/cache", "old.tmp", "cache") for r in d.events("file_deleted"))


def reload(d, count: int) -> dict:
    d.send(signal.SIGHUP)
    return d.wait_for("config_reloaded", count=count)[-1]


def test_a_reload_that_stops_excluding_a_path_copies_it(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, exclude=["*.log", "cache/"])
    write_tree(src, ["a.log", "cache/deep/x", "plain.txt"])
    config = write_config(tmp_path, [spec])
    d = daemon_factory(config)
    d.wait_ready()
    assert not (dst / "a.log").exists() and not (dst / "cache").exists()
    write_config(tmp_path, [{**spec, "exclude": ["cache/", "!cache/"]}])
    line = reload(d, 1)
    assert line["changed"] == ["data"], line
    d.wait_for("sync_finished", reason="reload")
    wait_mirrored(src, dst)  # nothing excluded any more: every path mirrored
    assert (dst / "a.log").read_bytes() == b"a.log" and (dst / "cache" / "deep" / "x").exists()


def test_exclude_from_is_read_again_on_reload(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, exclude_from="mirror.ignore")
    rules = tmp_path / "mirror.ignore"
    rules.write_text("*.log\n")
    write_tree(src, ["a.log", "b.bak", "plain.txt"])
    config = write_config(tmp_path, [spec])
    d = daemon_factory(config)
    d.wait_ready()
    assert not (dst / "a.log").exists() and (dst / "b.bak").exists()
    # Only the file changes, the YAML not: still a changed folder, compared again.
    rules.write_text("*.bak\n")
    assert reload(d, 1)["changed"] == ["data"]
    d.wait_for("sync_finished", reason="reload")
    wait_until(lambda: (dst / "a.log").exists(), 30, "a.log, no longer excluded, is copied")
    (src / "live.bak").write_bytes(b"excluded now")
    (src / "live.txt").write_bytes(b"mirrored")
    wait_until(lambda: (dst / "live.txt").exists(), 30, "live.txt is mirrored")
    wait_settled(config)
    assert not (dst / "live.bak").exists()
    assert (dst / "b.bak").exists()  # excluded now: kept, though delete is true
    # A missing file on reload: config_invalid naming it and its key; the old config runs on.
    rules.unlink()
    d.send(signal.SIGHUP)
    bad = d.wait_for("config_invalid")[0]
    assert "mirror.ignore" in bad["error"] and "folders[0].exclude_from" in bad["error"], bad
    (src / "after.bak").write_bytes(b"still excluded")
    (src / "after.txt").write_bytes(b"still mirrored")
    wait_until(lambda: (dst / "after.txt").exists(), 30, "the old config still mirrors")
    rules.write_text("*.bak\n")  # `status` reads the config too: it needs the file back
    wait_settled(config)
    assert not (dst / "after.bak").exists()


def test_a_missing_exclude_from_file_stops_the_start_with_exit_78(tmp_path):
    _, _, spec = pair(tmp_path, exclude_from=["here.ignore", "missing.ignore"])
    (tmp_path / "here.ignore").write_text("*.o\n")
    config = write_config(tmp_path, [spec])
    for command in ("run", "check"):
        r = fm(command, "--config", str(config))
        assert r.returncode == 78, r.stderr
        assert "folders[0].exclude_from[1]" in r.stderr and "missing.ignore" in r.stderr, r.stderr


def test_an_unreadable_exclude_from_file_is_a_config_error(tmp_path):
    # As root, without the capabilities that read any file (as non-root the mode alone does it).
    prefix = setpriv_or_skip() if os.geteuid() == 0 else ()
    _, _, spec = pair(tmp_path, exclude_from="secret.ignore")
    (tmp_path / "secret.ignore").write_text("*.o\n")
    (tmp_path / "secret.ignore").chmod(0)
    r = fm("check", "--config", str(write_config(tmp_path, [spec])), prefix=prefix)
    assert r.returncode == 78, r.stderr
    assert "folders[0].exclude_from" in r.stderr and "secret.ignore: Permission denied" in r.stderr, r.stderr


def test_check_explains_each_pattern_whose_meaning_changed(tmp_path):
    _, _, spec = pair(tmp_path, exclude=["*.tmp", "docs/*.pdf", "**/*.log"])
    r = fm("check", "--config", str(write_config(tmp_path, [spec])))
    lines = [line for line in r.stdout.splitlines() if "changed meaning" in line]
    assert len(lines) == 2, r.stdout
    assert "'docs/*.pdf'" in lines[0] and "before," in lines[0] and "now it matches" in lines[0] and "/docs/**/*.pdf" in lines[0]
    assert "'**/*.log'" in lines[1] and "/*/**/*.log" in lines[1]


def test_a_remote_target_honours_the_rules_and_keeps_excluded_paths(tmp_path, sshd, daemon_factory):
    from sshd import ssh_config_block

    (tmp_path / "rules.ignore").write_text(EXCLUDE_FROM)
    src, dst, spec = remote_pair(tmp_path, sshd, delete=True, exclude=EXCLUDE, exclude_from=["rules.ignore"])
    write_tree(src)
    # Excluded paths only the remote has, and an excluded one both have.
    write_tree(dst, ["old.tmp", "docs/a.pdf", "cache/blob", "src/cache/x", "x/y/c.log", "extra.txt",
                     "only-remote/deep/x.tmp", "only-remote/gone.txt"])
    d = daemon_factory(write_config(tmp_path, [spec], ssh=ssh_config_block(sshd)))
    d.wait_for("remote_up", 30)
    d.wait_ready(60)
    wait_until(lambda: not (dst / "extra.txt").exists(), 30, "the extra, not excluded, file is deleted")
    # A directory only the remote has stays whole while it holds an excluded entry (a delete
    # pass would list the directory, and rsync --force takes all in it).
    kept = ("old.tmp", "docs/a.pdf", "cache/blob", "src/cache/x", "x/y/c.log", "only-remote/deep/x.tmp",
            "only-remote/gone.txt")
    for rel in kept:
        assert (dst / rel).exists(), rel
    for rel in ("keep.tmp", "sub/top.txt", "docs/a/b.pdf", "other/cache", "important.log", "a/zz", "plain.txt"):
        assert (dst / rel).exists(), rel
    assert not any((dst / rel).exists() for rel in ("x.tmp", "top.txt", "c.log", "a/z", "a/b/z", RESERVED))
    # Live: an excluded file written and one deleted in the source; neither reaches the remote.
    (src / "live.tmp").write_bytes(b"no")
    (src / "x" / "y" / "c.log").unlink()
    (src / "live.txt").write_bytes(b"yes")
    (src / "plain.txt").unlink()
    wait_until(lambda: (dst / "live.txt").exists() and not (dst / "plain.txt").exists(), 30, "live changes")
    wait_settled(d.config)
    assert not (dst / "live.tmp").exists()
    for rel in kept:
        assert (dst / rel).exists(), rel
