"""One daemon per target, its pure parts: the target lock and its reserved name in comparisons
and workers. Daemons (or a sync) meeting at a target: daemon/test_lock.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from foldermirror import targetlock, tempnames
from foldermirror.catchup.compare import WalkStats, diff_tree
from foldermirror.errors import FoldermirrorError
from foldermirror.paths import Excluder
from foldermirror.pipeline.copier import Mirror, SourceTree
from foldermirror.pipeline.records import Outcome, Status
from foldermirror.pipeline.targets import LocalTarget
from foldermirror.targetlock import TargetLocked
from foldermirror.tempnames import RESERVED_REASON, is_reserved, temp_name
from helpers import ENV, LOCK_NAME, lock_holder

# -- targetlock ------------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_the_lock_conflicts_with_a_second_open_file_description_and_names_its_holder(tmp_path):
    assert LOCK_NAME == tempnames.LOCK_NAME  # the tests' own copy of the name
    lock = targetlock.acquire(str(tmp_path), "/etc/foldermirror/a.yaml")
    assert lock.path == str(tmp_path / LOCK_NAME) and lock.intact()
    assert lock_holder(tmp_path) == {"pid": os.getpid(), "config": "/etc/foldermirror/a.yaml"}
    with pytest.raises(TargetLocked) as caught:  # flock: a second open() conflicts even in one process
        targetlock.acquire(str(tmp_path), "/etc/foldermirror/b.yaml")
    exc = caught.value
    assert isinstance(exc, FoldermirrorError)
    assert (exc.target, exc.pid, exc.config) == (str(tmp_path), os.getpid(), "/etc/foldermirror/a.yaml")
    assert str(exc) == f"{tmp_path} is already mirrored by pid {os.getpid()} (/etc/foldermirror/a.yaml)"
    assert lock_holder(tmp_path)["config"] == "/etc/foldermirror/a.yaml"  # the loser wrote nothing
    lock.release()
    lock.release()  # twice is harmless
    assert not lock.intact()
    again = targetlock.acquire(str(tmp_path), "/etc/foldermirror/b.yaml")
    assert lock_holder(tmp_path) == {"pid": os.getpid(), "config": "/etc/foldermirror/b.yaml"}
    again.release()
    assert (tmp_path / LOCK_NAME).exists()  # never deleted: the flock, not the file, is the lock


@pytest.mark.timeout(10)
def test_intact_is_false_once_the_lock_file_or_the_target_is_deleted_or_replaced(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    lock = targetlock.acquire(str(target), "/c.yaml")
    (target / LOCK_NAME).unlink()
    assert not lock.intact()
    lock.release()

    lock = targetlock.acquire(str(target), "/c.yaml")
    shutil.rmtree(target)
    assert not lock.intact()
    target.mkdir()  # recreated: a new lock file there is free for anyone
    other = targetlock.acquire(str(target), "/other.yaml")
    assert other.intact() and not lock.intact()
    lock.release()
    other.release()

    lock = targetlock.acquire(str(target), "/c.yaml")
    os.rename(target / LOCK_NAME, target / "moved")
    (target / LOCK_NAME).write_text("")
    assert not lock.intact()
    lock.release()


@pytest.mark.timeout(20)
def test_the_lock_dies_with_its_holder_even_when_it_is_killed(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom foldermirror import targetlock\n"
         "targetlock.acquire(sys.argv[1], '/child.yaml')\nprint('locked', flush=True)\ntime.sleep(600)\n",  # sleep-ok: holds the lock until killed
         str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(TargetLocked) as caught:
            targetlock.acquire(str(tmp_path), "/me.yaml")
        assert (caught.value.pid, caught.value.config) == (child.pid, "/child.yaml")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        lock = targetlock.acquire(str(tmp_path), "/me.yaml")  # no stale-lock clean-up needed
        assert lock_holder(tmp_path) == {"pid": os.getpid(), "config": "/me.yaml"}
        lock.release()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


@pytest.mark.timeout(10)
def test_a_lock_path_that_is_a_directory_or_a_symlink_is_refused_with_a_reason(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(FoldermirrorError, match="is a directory"):
        targetlock.acquire(str(tmp_path), "/c.yaml")
    (tmp_path / LOCK_NAME).rmdir()
    (tmp_path / "elsewhere").write_text("keep me")
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FoldermirrorError, match="symlink"):
        targetlock.acquire(str(tmp_path), "/c.yaml")
    assert (tmp_path / "elsewhere").read_text() == "keep me"


# -- the reserved name in comparisons and workers ----------------------------------------------

@pytest.mark.timeout(10)
def test_comparisons_never_delete_or_count_the_lock_file(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    dst.mkdir()
    (src / "keep").write_text("k")
    (dst / "keep").write_text("k")
    (dst / LOCK_NAME).write_text("{}")
    (dst / "extra").mkdir()
    (dst / "extra" / "one").write_text("1")
    (dst / "extra" / LOCK_NAME).write_text("{}")
    stats = WalkStats()
    diffs = {d.path: d.reason for d in diff_tree(str(src), str(dst), Excluder(()), True, "i", stats=stats)}
    diffs.pop("keep", None)  # its mtime may differ: not what this is about
    assert diffs == {"extra": "extra"}, diffs
    # what deleting `extra` removes: itself and `one`; the lock names are neither deleted nor counted
    assert (stats.doomed, stats.target_entries) == (2, 3), stats
    # the reserved name in the source is not mirrored: a difference the worker skips with a warning
    (src / LOCK_NAME).write_text("a user's file")
    (src / "sub").mkdir()
    (src / "sub" / LOCK_NAME).write_text("another")
    diffs = {d.path: d.reason for d in diff_tree(str(src), str(dst), Excluder(()), True, "i")}
    assert diffs[LOCK_NAME] == "reserved" and diffs[f"sub/{LOCK_NAME}"] == "reserved", diffs
    assert Excluder(())(LOCK_NAME) and Excluder(())(f"sub/{LOCK_NAME}")  # no event reaches a worker
    assert is_reserved(LOCK_NAME) and is_reserved(temp_name("abc"))
    assert not is_reserved(LOCK_NAME + ".bak") and not is_reserved("foldermirror.lock")


@pytest.mark.timeout(10)
def test_a_worker_never_replaces_deletes_or_moves_the_lock_file(tmp_path):
    src, dst = tmp_path / "s", tmp_path / "t"
    src.mkdir()
    dst.mkdir()
    (dst / LOCK_NAME).write_text("ours")
    sroot = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    troot = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    os.close(troot)
    m = Mirror(SourceTree(sroot), LocalTarget(str(dst), delete=True, durable=False, instance="i"), delete=True)
    try:
        # source has no such file and delete is on: a plain sync would delete the target's
        assert m.mirror(LOCK_NAME, None)[-1][1:2] == ("skipped",)
        (src / LOCK_NAME).write_text("theirs")
        out = m.mirror(LOCK_NAME, None)
        assert out == [Outcome(LOCK_NAME, Status.SKIPPED, "file", 0, RESERVED_REASON)]
        # a rename replayed onto or away from the name moves nothing over or out of it
        (src / "renamed").write_text("r")
        out = m.mirror("renamed", LOCK_NAME)
        assert [o[1] for o in out] == ["skipped", "copied"], out
        os.rename(src / "renamed", src / "x")
        (dst / "x").write_text("old mirror of x")
        m.mirror(LOCK_NAME, "x")
        assert (dst / LOCK_NAME).read_text() == "ours"
    finally:
        m.source.close()
        m.target.close()
    assert (dst / LOCK_NAME).read_text() == "ours"
