"""LocalTargetHealth (pipeline/target_health.py): the probe `run` and `check` share, the root's
identity, making it again. Real directories; root passes permission checks, so the case
that cannot be served is a file standing where a directory should be.
"""

from __future__ import annotations

from pathlib import Path

from foldermirror.pipeline.target_health import LocalTargetHealth
from foldermirror.tempnames import is_temp_name


def test_probe_with_create_makes_the_root_and_leaves_nothing(tmp_path: Path):
    root = tmp_path / "a" / "b"
    probe = LocalTargetHealth(str(root), "t1").probe(create=True, user="me")
    assert probe.problem is None and probe.proved == "target writable by me"
    assert root.is_dir() and list(root.iterdir()) == []


def test_probe_without_create_makes_nothing_and_names_the_parent_it_would_use(tmp_path: Path):
    root = tmp_path / "a" / "b"
    probe = LocalTargetHealth(str(root), "t1").probe(create=False, user="me")
    assert probe.problem is None
    assert probe.proved == f"target {root} does not exist yet: run creates it in {tmp_path}, writable by me"
    assert list(tmp_path.iterdir()) == []


def test_probe_names_what_stands_in_the_way(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "t"
    for create in (True, False):
        problem = LocalTargetHealth(str(root), "t1").probe(create=create, user="me").problem
        assert problem is not None and problem.startswith(f"cannot create target {root}: ")
        assert "Not a directory (ENOTDIR)" in problem or "File exists (EEXIST)" in problem, problem


def test_identity_follows_the_directory_standing_at_the_path(tmp_path: Path):
    root = tmp_path / "t"
    health = LocalTargetHealth(str(root), "t1")
    assert health.identity() is None
    health.remake()
    first = health.identity()
    assert first is not None
    root.rename(tmp_path / "old")
    health.remake()
    assert health.identity() not in (None, first)
    assert not any(is_temp_name(p.name) for p in tmp_path.rglob("*"))
