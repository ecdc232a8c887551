"""Versions, pure and in-process: names, retention selection, counts, the keeper under a target, the pruner."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from foldermirror.config import VersionsConfig
from foldermirror.pipeline.records import Kept
from foldermirror.pipeline.targets import LocalTarget
from foldermirror.pipeline.versions import (
    NOT_KEPT,
    AreaName,
    Version,
    dir_version_name,
    parse_stamp,
    split_entry,
    split_version,
    stamp,
    version_name,
    walk,
)
from foldermirror.versioning import (
    DAY_NS,
    HOUR_NS,
    Pruner,
    VersionCounts,
    choose,
    listing,
    parse_time,
    restore_plan,
    to_prune,
)

NOW = 1_800_000_000 * 10**9 + 123_456_000  # a fixed "now": retention is driven by it, never by the clock
S = 10**9


def test_stamp_round_trips_to_the_microsecond_and_sorts_as_time():
    assert stamp(NOW) == "20270115T080000.123456Z"
    assert parse_stamp(stamp(NOW)) == NOW
    assert sorted([stamp(NOW + DAY_NS), stamp(NOW), stamp(NOW + S)]) == [stamp(NOW), stamp(NOW + S), stamp(NOW + DAY_NS)]
    for bad in ("", "20271301T000000.000000Z", "20270115T080000Z", "x20270115T080000.000000Z"):
        assert parse_stamp(bad) is None


def test_a_version_name_keeps_the_path_name_and_splits_on_the_last_tilde():
    assert version_name("b.txt", NOW) == "b.txt~20270115T080000.123456Z"
    assert split_version("b.txt~20270115T080000.123456Z") == ("b.txt", NOW)
    assert split_version("a~b~20270115T080000.123456Z") == ("a~b", NOW)
    assert split_version("notes~") is None and split_version("~20270115T080000.123456Z") is None
    assert split_version("plain.txt") is None



def test_an_area_name_says_which_path_it_is_a_version_of_and_whether_a_directory():
    name = version_name("b.txt", NOW)
    assert split_entry("a", name) == AreaName("a/b.txt", NOW, False)
    assert split_entry("", name) == AreaName("b.txt", NOW, False)
    assert dir_version_name(NOW) == "~20270115T080000.123456Z"
    assert split_entry("a/d", dir_version_name(NOW)) == AreaName("a/d", NOW, True)   # the directory a/d itself
    assert split_entry("", dir_version_name(NOW)) is None       # the folder's root is never deleted
    assert split_entry("a", version_name("~x", NOW)) == AreaName("a/~x", NOW, False)  # a file named ~x
    assert split_entry("a", "plain") is None and split_entry("a", "~") is None

def policy(keep: str = "age", max_age: float = 30 * 86400.0, count: int = 5) -> VersionsConfig:
    return VersionsConfig(keep=keep, max_age=max_age, count=count)


def ages(*values: int) -> list[int]:
    return [NOW - v for v in values]


def test_keep_age_prunes_only_what_is_older_than_max_age():
    times = ages(S, 10 * DAY_NS, 30 * DAY_NS - S, 30 * DAY_NS + S, 300 * DAY_NS)
    assert to_prune(policy(max_age=30 * 86400.0), times, NOW) == set(ages(30 * DAY_NS + S, 300 * DAY_NS))
    assert to_prune(policy(max_age=0), times, NOW) == set()  # 0: never by age


def test_keep_count_keeps_the_newest_n_and_max_age_still_applies():
    times = ages(1 * S, 2 * S, 3 * S, 4 * S)
    assert to_prune(policy("count", max_age=0, count=2), times, NOW) == set(ages(3 * S, 4 * S))
    assert to_prune(policy("count", max_age=0, count=9), times, NOW) == set()
    old = ages(S, 40 * DAY_NS)
    assert to_prune(policy("count", max_age=30 * 86400.0, count=5), old, NOW) == set(ages(40 * DAY_NS))


def test_staggered_keeps_all_for_an_hour_then_one_per_hour_day_and_week():
    now = (NOW // (7 * DAY_NS)) * 7 * DAY_NS + 3 * DAY_NS + 12 * HOUR_NS + 30 * 60 * S  # mid-hour, mid-week
    young = [now - m * 60 * S for m in (1, 5, 59)]
    hour_a = [now - 2 * HOUR_NS - m * 60 * S for m in (0, 5, 10)]        # one hour bucket (mid-hour now)
    day_a = [now - 3 * DAY_NS - h * HOUR_NS for h in (0, 1, 2)]          # one day bucket (now at 12:30)
    week = (now - 60 * DAY_NS) // (7 * DAY_NS) * 7 * DAY_NS
    week_a = [week + 2 * DAY_NS, week + HOUR_NS]                         # one week bucket, both past 30 days
    too_old = [now - 400 * DAY_NS]
    p = policy("staggered", max_age=365 * 86400.0)
    pruned = to_prune(p, young + hour_a + day_a + week_a + too_old, now)
    assert not pruned & set(young)
    assert pruned & set(hour_a) == set(hour_a[1:])   # the newest of the bucket stays
    assert pruned & set(day_a) == set(day_a[1:])
    assert pruned & set(week_a) == {week_a[1]}
    assert too_old[0] in pruned


def test_the_same_instant_twice_is_one_version_name_each():
    t = policy("count", max_age=0, count=1)
    assert to_prune(t, [NOW, NOW], NOW) == set()


def test_counts_are_the_last_pass_plus_what_was_kept_since_minus_what_is_pruned():
    c = VersionCounts()
    c.kept(Kept("a~x", 1, 10), NOW)
    v = c.view()
    assert (v.count, v.bytes, v.counted, v.oldest_ns) == (1, 10, False, NOW)
    c.pass_started()
    c.kept(Kept("b~x", 1, 5), NOW + S)      # during the pass: the pass skips it (newer than its start)
    from foldermirror.versioning import _Tally
    survivors = _Tally()
    survivors.add(3, 30, NOW - DAY_NS)      # what the pass found and kept
    c.pruned(1, 10)
    c.pass_ended(survivors)
    v = c.view()
    assert (v.count, v.bytes, v.counted, v.oldest_ns) == (4, 35, True, NOW - DAY_NS)


def target_with_versions(tmp_path, **kw) -> tuple[LocalTarget, str]:
    area = str(tmp_path / "area")
    return LocalTarget(str(tmp_path / "dst"), delete=True, durable=False, instance="t", versions=area, **kw), area


def publish(t: LocalTarget, parts: list[str], data: bytes, src_stat: os.stat_result) -> None:
    def write(fd: int) -> int:
        os.write(fd, data)
        return len(data)
    t.publish_file(parts, src_stat, write, lambda p: src_stat, t.lstat(parts))


def test_the_keeper_links_before_replace_and_delete_and_reports_each_path(tmp_path):
    (tmp_path / "s").write_bytes(b"s")
    st = os.stat(tmp_path / "s")
    t, area = target_with_versions(tmp_path)
    publish(t, ["d", "f"], b"one", st)
    assert t.kept_versions() == {}           # nothing stood there
    publish(t, ["d", "f"], b"two", st)
    kept = t.kept_versions()
    assert list(kept) == ["d/f"] and kept["d/f"].path.startswith("d/f~") and kept["d/f"].bytes == 3
    assert (tmp_path / "area" / kept["d/f"].path).read_bytes() == b"one"
    assert stat.S_IMODE(os.stat(tmp_path / "area" / "d").st_mode) == 0o700
    assert t.delete(["d"]) == stat.S_IFDIR
    kept = t.kept_versions()
    assert kept == {"d": Kept("d", 1, 3, dirs=1)}
    assert sorted((v.path, v.kind) for v in walk(area)) == [("d", "dir"), ("d/f", "file"), ("d/f", "file")]
    t.close()


def test_with_durable_the_versions_entry_is_synced_before_the_replace(tmp_path, monkeypatch):
    (tmp_path / "s").write_bytes(b"s")
    st = os.stat(tmp_path / "s")
    t, _ = target_with_versions(tmp_path)
    t.durable = t.keeper.durable = True
    publish(t, ["f"], b"old", st)
    order: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda *a, **k: (order.append("rename"), real_rename(*a, **k))[1])
    publish(t, ["f"], b"new", st)
    assert order[:3] == ["fsync", "fsync", "rename"], order  # the temp file, the area's directory, then the rename
    t.close()


def test_a_version_that_cannot_be_made_stops_the_replace(tmp_path, monkeypatch):
    (tmp_path / "s").write_bytes(b"s")
    st = os.stat(tmp_path / "s")
    t, area = target_with_versions(tmp_path)
    publish(t, ["f"], b"old", st)
    real_link = os.link

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError) as info:
        publish(t, ["f"], b"new", st)
    assert info.value.errno == errno.ENOSPC and info.value.strerror.startswith(NOT_KEPT)
    assert area in info.value.strerror
    assert (tmp_path / "dst" / "f").read_bytes() == b"old"
    assert [n for n in os.listdir(tmp_path / "dst")] == ["f"]  # no temp file left
    with pytest.raises(OSError):
        t.delete(["f"])
    assert (tmp_path / "dst" / "f").exists()
    monkeypatch.setattr(os, "link", real_link)
    t.close()


def test_a_directory_kept_in_part_leaves_nothing_behind(tmp_path, monkeypatch):
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    for n in "abc":
        (dst / "d" / n).write_bytes(n.encode())
    t, area = target_with_versions(tmp_path)
    real_link, calls = os.link, []

    def third_fails(*a, **k):
        calls.append(a)
        if len(calls) == 3:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real_link(*a, **k)
    monkeypatch.setattr(os, "link", third_fails)
    with pytest.raises(OSError):
        t.delete(["d"])
    assert sorted(os.listdir(dst / "d")) == ["a", "b", "c"]
    assert list(walk(area)) == []
    t.close()



def test_a_deleted_tree_keeps_each_directory_with_its_mode_and_mtime(tmp_path):
    dst = tmp_path / "dst"
    (dst / "t" / "empty").mkdir(parents=True)
    (dst / "t" / "sub").mkdir()
    (dst / "t" / "sub" / "f").write_bytes(b"12345")
    modes = {"t": 0o750, "t/empty": 0o700, "t/sub": 0o755}
    for i, (rel, mode) in enumerate(modes.items()):
        os.chmod(dst / rel, mode)
        os.utime(dst / rel, ns=(NOW, NOW + i * S))
    t, area = target_with_versions(tmp_path)
    assert t.delete(["t"]) == stat.S_IFDIR
    assert t.kept_versions() == {"t": Kept("t", 1, 5, dirs=3)}
    dirs = {v.path: v for v in walk(area) if v.kind == "dir"}
    assert sorted(dirs) == sorted(modes)
    for i, (rel, mode) in enumerate(modes.items()):
        st = os.lstat(os.path.join(area, dirs[rel].name))
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size) == (mode, NOW + i * S, 0), rel
        assert dirs[rel].name == f"{rel}/{dir_version_name(dirs[rel].ns)}"
    assert len({v.ns for v in walk(area)}) == 1   # one time for the whole tree
    t.close()


def test_a_restore_makes_directories_first_and_settles_them_deepest_first():
    def v(path: str, kind: str) -> Version:
        return Version(path, NOW, 0, kind, path)
    chosen = {p: v(p, k) for p, k in [("a/b/c", "dir"), ("a", "dir"), ("a/b/f", "file"), ("a-b", "dir"),
                                       ("a/b", "dir"), ("z", "symlink"), ("a/e", "dir")]}
    plan = restore_plan(chosen)
    assert [d.path for d in plan.dirs] == ["a", "a-b", "a/b", "a/e", "a/b/c"]
    assert [f.path for f in plan.files] == ["a/b/f", "z"]
    deepest_first = [d.path for d in reversed(plan.dirs)]
    for i, path in enumerate(deepest_first):  # each before every directory above it
        assert not any(path.startswith(above + "/") for above in deepest_first[:i]), deepest_first


def test_a_directory_is_made_when_missing_left_when_there_and_never_over_a_file(tmp_path):
    from foldermirror.versioning import RestoreError, make_dir

    dest = tmp_path / "dest"
    assert make_dir(Version("a/b", NOW, 0, "dir", "a/b/~x"), str(dest)) is True
    assert stat.S_IMODE(os.lstat(dest / "a" / "b").st_mode) == 0o700   # private until settled
    os.chmod(dest / "a" / "b", 0o751)
    assert make_dir(Version("a/b", NOW, 0, "dir", "a/b/~x"), str(dest)) is False
    assert stat.S_IMODE(os.lstat(dest / "a" / "b").st_mode) == 0o751   # left as it is
    (dest / "f").write_bytes(b"x")
    with pytest.raises(RestoreError, match="not a directory"):
        make_dir(Version("f", NOW, 0, "dir", "f/~x"), str(dest))

def test_listing_choose_and_parse_time(tmp_path):
    area = tmp_path / "area"
    (area / "x").mkdir(parents=True)
    for i in range(3):
        (area / "x" / version_name("f", NOW + i * DAY_NS)).write_bytes(b"v%d" % i)
    (area / version_name("g", NOW)).write_bytes(b"g")
    found = listing(str(area), "x/f")
    assert [v.ns for v in found] == [NOW + 2 * DAY_NS, NOW + DAY_NS, NOW]  # newest first
    assert [v.path for v in listing(str(area), ".")].count("x/f") == 3
    assert {v.path for v in listing(str(area), "x")} == {"x/f"}
    assert choose(found, None)["x/f"].ns == NOW + 2 * DAY_NS
    assert choose(found, NOW + S)["x/f"].ns == NOW + DAY_NS   # in the mirror then: the next one kept
    assert choose(found, NOW + 3 * DAY_NS) == {}
    (area / "x" / dir_version_name(NOW + DAY_NS)).touch()   # x itself, deleted with the second version of f
    in_x = listing(str(area), "x")
    assert [(v.path, v.kind) for v in in_x if v.kind == "dir"] == [("x", "dir")]
    assert {p: v.ns for p, v in choose(in_x, NOW + S).items()} == {"x": NOW + DAY_NS, "x/f": NOW + DAY_NS}
    assert [v.path for v in listing(str(area), "x/f")] == ["x/f"] * 3      # a file's listing has no directory
    assert parse_time(stamp(NOW)) == NOW
    assert parse_time("2027-01-15T08:00:00Z") == NOW - 123_456_000
    assert parse_time("2027-01-15T09:00:00+01:00") == NOW - 123_456_000


class _State:
    def __init__(self, config):
        self.config = config


class _Folder:
    def __init__(self, area, versions):
        self.versions = versions
        self.versions_area = area
        self.remote = None


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, event, **kw):
        self.lines.append((event, kw))

    warning = info


def test_the_pruner_works_a_budget_at_a_time_and_says_once_what_it_pruned(tmp_path):
    area = tmp_path / "area"
    for d in range(10):
        (area / f"d{d}").mkdir(parents=True)
        for i in range(5):
            (area / f"d{d}" / version_name("f", NOW - i * DAY_NS)).write_bytes(b"12345")
    log = _Log()
    folders = {"data": _State(_Folder(str(area), policy("count", max_age=0, count=2)))}
    p = Pruner(log=log, folders=folders, wall_ns=lambda: NOW + S, budget=5)
    p.tick(0.0)
    assert p.active()
    ticks = 1
    while p.active():
        p.tick(0.0)
        ticks += 1
    assert ticks >= 10  # a directory of 6 entries a tick with a budget of 5
    assert log.lines == [("versions_pruned", {"folder": "data", "versions": 30, "bytes": 150, "kept": 20,
                                              "keep": "count"})]
    v = p.view("data")
    assert (v.count, v.bytes, v.counted) == (20, 100, True)
    assert p.deadline() == p.interval  # idle until the next pass



def test_the_pruner_prunes_directory_versions_by_the_same_policy(tmp_path):
    area = tmp_path / "area"
    (area / "d" / "e").mkdir(parents=True)
    for i in range(3):
        (area / "d" / dir_version_name(NOW - i * DAY_NS)).touch()
    (area / "d" / "e" / dir_version_name(NOW - 40 * DAY_NS)).touch()   # past max_age: the last entry of e
    (area / dir_version_name(NOW - 40 * DAY_NS)).touch()                # not a version (the root's): left
    folders = {"data": _State(_Folder(str(area), policy("count", max_age=30 * 86400.0, count=2)))}
    log = _Log()
    p = Pruner(log=log, folders=folders, wall_ns=lambda: NOW + S)
    p.tick(0.0)
    while p.active():
        p.tick(0.0)
    assert sorted(v.ns for v in walk(str(area)) if v.path == "d") == [NOW - DAY_NS, NOW]
    assert not (area / "d" / "e").exists()   # emptied by its pass
    assert (area / dir_version_name(NOW - 40 * DAY_NS)).exists()
    assert log.lines[0][1]["versions"] == 2 and p.view("data").count == 2
