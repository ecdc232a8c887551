"""The mass-delete guard's rules and its config key, without a daemon (see daemon/test_faults.py)."""

from __future__ import annotations

import pytest

from foldermirror.catchup.compare import MASS_DELETE_MIN, WalkStats, hold_deletions
from foldermirror.config import parse_config
from foldermirror.errors import ConfigError

# -- 11. mass-delete guard -------------------------------------------------------------------------------

def test_hold_deletions_rules():
    def stats(entries: int, target: int, doomed: int) -> WalkStats:
        return WalkStats(entries=entries, target_entries=target, doomed=doomed)

    assert hold_deletions(stats(0, 3, 3), 0.5)                  # the source looks empty
    assert not hold_deletions(stats(0, 3, 3), 1.0)              # the guard is off
    assert not hold_deletions(stats(0, 0, 0), 0.5)              # nothing to delete
    assert hold_deletions(stats(20, 100, 80), 0.5)              # lost most of its files
    assert not hold_deletions(stats(60, 100, 40), 0.5)          # an ordinary clean-up
    assert not hold_deletions(stats(1, MASS_DELETE_MIN, MASS_DELETE_MIN - 1), 0.5)  # too few to judge
    assert hold_deletions(stats(50, 100, 11), 0.1)


def test_max_delete_fraction_config(tmp_path):
    (tmp_path / "src").mkdir()
    cfg = parse_config("folders:\n  - {source: src, target: dst, delete: true}\n", str(tmp_path / "c.yaml"))
    assert cfg.folders[0].max_delete_fraction == 0.5  # old configs keep working, guarded
    cfg = parse_config("folders:\n  - {source: src, target: dst, max_delete_fraction: 1}\n", str(tmp_path / "c.yaml"))
    assert cfg.folders[0].max_delete_fraction == 1.0
    for bad in ("1.5", "half", "true"):
        with pytest.raises(ConfigError) as info:
            parse_config(f"folders:\n  - source: src\n    target: dst\n    max_delete_fraction: {bad}\n",
                         str(tmp_path / "c.yaml"))
        assert "folders[0].max_delete_fraction" in str(info.value) and "0 to 1" in str(info.value)
