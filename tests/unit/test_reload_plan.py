"""The reload diff (admission.reload_plan): what a reload stops, admits and releases."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import folder
from foldermirror.admission import reload_plan
from foldermirror.config import FolderConfig

ROOT = Path("/srv")


def served(*folders: FolderConfig) -> dict[str, FolderConfig]:
    return {f.name: f for f in folders}


def test_an_identical_file_changes_nothing():
    a, b = folder("a", ROOT), folder("b", ROOT)
    plan = reload_plan(served(a, b), (a, b))
    assert plan == ((), (), (), frozenset(), ())
    assert plan.stopped == ()


def test_a_folder_left_out_is_removed_and_its_lock_released():
    a, b = folder("a", ROOT), folder("b", ROOT)
    plan = reload_plan(served(a, b), (b,))
    assert (plan.removed, plan.added, plan.changed) == (("a",), (), ())
    assert plan.released == {"a"}
    assert plan.stopped == ("a",) and plan.to_admit == ()


def test_a_new_folder_is_added_and_admitted():
    a, b = folder("a", ROOT), folder("b", ROOT)
    plan = reload_plan(served(a), (a, b))
    assert (plan.removed, plan.added, plan.changed) == ((), ("b",), ())
    assert plan.to_admit == (b,) and plan.released == frozenset() and plan.stopped == ()


def test_a_changed_target_releases_the_old_targets_lock():
    a = folder("a", ROOT)
    moved = FolderConfig(name="a", source=a.source, target=ROOT / "elsewhere")
    plan = reload_plan(served(a), (moved,))
    assert plan.changed == ("a",) and plan.released == {"a"}
    assert plan.stopped == ("a",) and plan.to_admit == (moved,)


@pytest.mark.parametrize("setting", [{"settle": 2.0}, {"delete": True}, {"exclude": ("*.tmp",)},
                                     {"max_delay": 0.0}])
def test_a_changed_setting_keeps_the_lock(setting: dict[str, object]):
    a = folder("a", ROOT)
    tuned = folder("a", ROOT, **setting)
    plan = reload_plan(served(a), (tuned,))
    assert plan.changed == ("a",) and plan.released == frozenset()
    assert plan.to_admit == (tuned,)


def test_a_mixed_reload():
    keep, gone, tuned, moved = (folder(n, ROOT) for n in ("keep", "gone", "tuned", "moved"))
    new = (folder("tuned", ROOT, settle=1.0), keep, FolderConfig(name="moved", source=moved.source,
                                                                 target=ROOT / "new-target"), folder("fresh", ROOT))
    plan = reload_plan(served(keep, gone, tuned, moved), new)
    assert plan.removed == ("gone",)
    assert plan.added == ("fresh",)
    assert set(plan.changed) == {"tuned", "moved"}
    assert plan.released == {"gone", "moved"}
    assert {f.name for f in plan.to_admit} == {"fresh", "tuned", "moved"}


def test_to_admit_follows_the_new_files_order():
    a, b = folder("a", ROOT), folder("b", ROOT)
    new = (folder("a", ROOT, settle=1.0), b, folder("c", ROOT))  # a changed, then c added
    plan = reload_plan(served(a, b), new)
    assert [f.name for f in plan.to_admit] == ["a", "c"]
