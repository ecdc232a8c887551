"""Versions against a real daemon: what the mirror replaces or deletes is kept, pruned by policy,
listed and restored by the commands, and never lost when it cannot be kept."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from foldermirror.pipeline.versions import split_version, version_name
from helpers import fm, pair, status, wait_mirrored, wait_until, write_config

DAY = 86400 * 10**9


def area_of(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.versions"


def versions_of(area: Path, path: str) -> list[tuple[int, bytes]]:
    """(time, content) of each version of `path`, oldest first."""
    parent = area / path.rpartition("/")[0] if "/" in path else area
    name = path.rpartition("/")[2]
    out = []
    for entry in parent.iterdir() if parent.is_dir() else ():
        parsed = split_version(entry.name)
        if parsed is not None and parsed[0] == name and not entry.is_dir():
            out.append((parsed[1], entry.read_bytes()))
    return sorted(out)


@pytest.fixture
def versioned(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, versions={})
    config = write_config(tmp_path, [spec])
    d = daemon_factory(config)
    d.wait_ready()
    return src, dst, d, config


def test_a_delete_keeps_one_version(versioned):
    src, dst, d, _ = versioned
    (src / "a.txt").write_bytes(b"precious")
    wait_mirrored(src, dst)
    (src / "a.txt").unlink()
    wait_mirrored(src, dst)
    kept = versions_of(area_of(dst), "a.txt")
    assert [c for _, c in kept] == [b"precious"]
    rec = d.wait_for("file_deleted", path="a.txt")[0]
    assert rec["version_kept"].startswith("a.txt~"), rec
    assert not (dst / ".data-dst.versions").exists() and ".data-dst.versions" not in os.listdir(dst)
    # status counts it from the outcome, without walking the area again
    config = d.config
    versions = wait_until(lambda: (v := status(config)["folders"][0]["versions"]) and v["count"] == 1 and v,
                          10, lambda: str(status(config)["folders"][0]["versions"]))
    assert versions["bytes_kept"] == len(b"precious") and versions["oldest"].endswith("Z"), versions


def test_three_overwrites_keep_three_in_order(versioned):
    src, dst, d, _ = versioned
    (src / "sub").mkdir()
    f = src / "sub" / "b.txt"
    for i in range(4):
        f.write_bytes(f"v{i}".encode())
        wait_until(lambda i=i: (dst / "sub" / "b.txt").exists() and (dst / "sub" / "b.txt").read_bytes() == f"v{i}".encode(),
                   10, f"v{i} mirrored")
    kept = versions_of(area_of(dst), "sub/b.txt")
    assert [c for _, c in kept] == [b"v0", b"v1", b"v2"]
    mirrored = d.wait_for("file_mirrored", count=4, path="sub/b.txt")  # a line follows its publish
    assert sum("version_kept" in r for r in mirrored) == 3, mirrored


def test_a_replayed_rename_keeps_nothing(versioned):
    src, dst, d, _ = versioned
    (src / "old.txt").write_bytes(b"moved, not lost")
    wait_mirrored(src, dst)
    os.rename(src / "old.txt", src / "new.txt")
    wait_mirrored(src, dst)
    d.wait_for("file_mirrored", path="new.txt", renamed_from="old.txt")
    area = area_of(dst)
    assert not [p for p in area.rglob("*") if p.is_file()], list(area.rglob("*"))


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """What a restore must bring back, by path: files' bytes, mode and mtime; directories' mode."""
    out: dict[str, tuple[object, ...]] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir", st.st_mode)
        elif p.is_file():
            out[rel] = ("file", p.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


DIR_MODES = {"d0": 0o755, "d0/deep": 0o750, "d0/deep/er": 0o711, "d1": 0o750, "d2": 0o700, "d2/empty": 0o755}


def test_mass_delete_undone_by_restore(versioned, tmp_path):
    src, dst, d, config = versioned
    # Made whole outside the source, then moved in: each file is mirrored once, with its final
    # mode and mtime. Written in place, a copy made before the chmod or utime would be replaced,
    # and that replace would keep a version of its own.
    staging = tmp_path / "staging"
    for i in range(30):
        p = staging / f"d{i % 3}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(100 + i))
        os.chmod(p, 0o600 + (i % 2) * 0o40)
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 1000))
    for i, (rel, mode) in enumerate(sorted(DIR_MODES.items(), key=lambda kv: -kv[0].count("/"))):
        (staging / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(staging / rel, mode)
        os.utime(staging / rel, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000 + i * 10**9))
    for sub in ("d0", "d1", "d2"):
        os.rename(staging / sub, src / sub)
    wait_mirrored(src, dst)
    before = tree_state(src)
    assert sum(v[0] == "dir" for v in before.values()) == len(DIR_MODES)
    for sub in ("d0", "d1", "d2"):
        shutil.rmtree(src / sub)
    wait_mirrored(src, dst)
    assert [p.name for p in dst.iterdir()] == [".foldermirror.lock"]
    listed = fm("versions", "-c", str(config), "--folder", "data", "--json", ".")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    # A set: two workers deleting nested paths at once (a directory, and the tree holding it) may
    # each keep what they found; the restore takes the newest.
    assert {(r["path"], r["kind"]) for r in rows} == {(k, v[0]) for k, v in before.items()}, rows
    dir_rows: dict[str, dict[str, str]] = {}
    for r in rows:  # newest first
        if r["kind"] == "dir":
            dir_rows.setdefault(r["path"], r)
    area = area_of(dst)
    kept_mode = {p: stat.S_IMODE((area / r["version"]).lstat().st_mode) for p, r in dir_rows.items()}
    assert kept_mode == DIR_MODES  # as the mirror had them

    restored = fm("restore", "-c", str(config), "--folder", "data", ".")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.count("(directory, version ") == len(DIR_MODES), restored.stdout
    # Deepest first: each directory's line comes before its parent's.
    order = [line.split()[1].rstrip("/") for line in restored.stdout.splitlines() if "(directory, " in line]
    assert all(order.index(p) < order.index(p.rpartition("/")[0]) for p in order if "/" in p), order
    assert tree_state(src) == before
    for rel, r in dir_rows.items():
        # The mtime its version carries, set once the files were in (each one renamed in changed it).
        assert (src / rel).lstat().st_mtime_ns == (area / r["version"]).lstat().st_mtime_ns, rel
    wait_mirrored(src, dst)

    # A directory that is there is left as it is; --force gives it its version's mode and mtime.
    os.chmod(src / "d1", 0o711)
    again = fm("restore", "-c", str(config), "--folder", "data", "d1")
    assert again.returncode == 0 and "left d1/ as it is" in again.stdout, again
    assert stat.S_IMODE((src / "d1").lstat().st_mode) == 0o711
    forced = fm("restore", "-c", str(config), "--folder", "data", "d1", "--force")
    assert forced.returncode == 0 and "restored d1/ (directory" in forced.stdout, forced
    st = (src / "d1").lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        0o750, (area / dir_rows["d1"]["version"]).lstat().st_mtime_ns)
    wait_mirrored(src, dst)


def test_restore_chooses_a_version_and_refuses_a_newer_file(versioned):
    src, dst, d, config = versioned
    f = src / "doc.txt"
    contents = [b"first draft", b"second", b"ransomware"]
    for i, c in enumerate(contents):
        f.write_bytes(c)
        os.chmod(f, 0o640 if i == 0 else 0o600)
        os.utime(f, ns=(1_700_000_000_000_000_000 + i * DAY, 1_700_000_000_000_000_000 + i * DAY))
        wait_until(lambda c=c: (dst / "doc.txt").exists() and (dst / "doc.txt").read_bytes() == c, 10, "mirrored")
    listed = fm("versions", "-c", str(config), "--folder", "data", "doc.txt")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and "doc.txt" in lines[1], listed.stdout  # a header, newest first
    oldest = json.loads(fm("versions", "-c", str(config), "--folder", "data", "--json", "doc.txt").stdout
                        .splitlines()[-1])
    # Written after that version left the mirror: refused without --force.
    f.write_bytes(b"a newer edit")
    refused = fm("restore", "-c", str(config), "--folder", "data", "doc.txt", "--at", oldest["time"])
    assert refused.returncode == 1 and "--force" in refused.stderr, refused
    assert f.read_bytes() == b"a newer edit"
    done = fm("restore", "-c", str(config), "--folder", "data", "doc.txt", "--at", oldest["time"], "--force")
    assert done.returncode == 0, done.stderr
    st = f.stat()
    assert f.read_bytes() == b"first draft"
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_700_000_000_000_000_000)
    wait_mirrored(src, dst)
    # --to writes elsewhere, and a version between two times is the one in the mirror then
    out = src.parent / "elsewhere"
    done = fm("restore", "-c", str(config), "--folder", "data", "doc.txt", "--to", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "doc.txt").exists()


def _old_versions(area: Path, path: str, ages_ns: list[int], now: int) -> None:
    parent = area / path.rpartition("/")[0] if "/" in path else area
    parent.mkdir(parents=True, exist_ok=True)
    for age in ages_ns:
        (parent / version_name(path.rpartition("/")[2], now - age)).write_bytes(b"x" * 10)


@pytest.mark.parametrize(("versions", "expect_left"), [
    ({"keep": "age", "max_age": "10d"}, 3),             # 1h, 2d, 9d stay; 11d, 40d go
    ({"keep": "count", "count": 2, "max_age": 0}, 2),   # the newest two
    ({"keep": "staggered", "max_age": "365d"}, 5),      # 10m, 12m; one of each pair at 3h, 3d, 40d; not 400d
])
def test_retention_prunes_at_start(tmp_path, daemon_factory, versions, expect_left):
    src, dst, spec = pair(tmp_path, delete=True, versions=versions)
    area = area_of(dst)
    now = time.time_ns()
    hour = 3600 * 10**9
    second = 10**9
    # staggered: under an hour all are kept; of two a second apart one is (in the same hour, day or
    # week bucket, unless a boundary falls between them: the policy itself decides, below)
    ages = [600 * second, 720 * second, 3 * hour, 3 * hour + second, 3 * DAY, 3 * DAY + second,
            40 * DAY, 40 * DAY + second, 400 * DAY]
    if versions["keep"] != "staggered":
        ages = [hour, 2 * DAY, 9 * DAY, 11 * DAY, 40 * DAY]
    _old_versions(area, "k/f.txt", ages, now)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    from foldermirror.config import VersionsConfig
    from foldermirror.versioning import to_prune

    if versions["keep"] == "staggered":
        policy = VersionsConfig(keep="staggered", max_age=365 * 86400.0)
        computed = len(ages) - len(to_prune(policy, [now - a for a in ages], now))
        assert computed in (expect_left, expect_left + 1)  # +1: a bucket boundary between a pair
        expect_left = computed
    rec = d.wait_for("versions_pruned", folder="data")[0]
    left = versions_of(area, "k/f.txt")
    assert len(left) == expect_left, (left, rec)
    assert rec["versions"] == len(ages) - expect_left and rec["bytes"] == 10 * rec["versions"]


def test_a_full_versions_area_blocks_the_replace_and_loses_nothing(tmp_path, daemon_factory):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    fs = tmp_path / "small"
    fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(fs)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        src = tmp_path / "src"
        src.mkdir()
        dst = fs / "dst"
        spec = {"name": "data", "source": str(src), "target": str(dst), "delete": True,
                "versions": {"path": str(fs / "versions")}}
        (src / "a.txt").write_bytes(b"the old content")
        d = daemon_factory(write_config(tmp_path, [spec]))
        d.wait_ready()
        wait_mirrored(src, dst)
        # Use up the inodes: a hard link of a tmpfs file takes one, so the version cannot be made.
        filler = fs / "filler"
        filler.mkdir()
        with contextlib.suppress(OSError):
            for i in range(1000):
                (filler / str(i)).touch()
        os.unlink(filler / "0")  # one left: the temp file of the new content gets it, the link does not
        (src / "a.txt").write_bytes(b"the new content")
        rec = d.wait_for("mirror_failed", path="a.txt")[0]
        assert rec["will_retry"] is True and rec["errno"] == "ENOSPC", rec
        assert str(fs / "versions") in rec["fix"], rec
        assert (dst / "a.txt").read_bytes() == b"the old content"
        # Room again: the retry keeps the old content and mirrors the new.
        shutil.rmtree(filler)
        wait_until(lambda: (dst / "a.txt").read_bytes() == b"the new content", 30, "the retry")
        assert [c for _, c in versions_of(fs / "versions", "a.txt")] == [b"the old content"]
        d.stop()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_a_versions_area_on_another_file_system_is_refused(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True, versions={"path": "/dev/shm/fm-versions-test"})
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    config = write_config(tmp_path, [spec])
    checked = fm("check", "-c", str(config))
    assert checked.returncode == 78, checked
    assert "/dev/shm/fm-versions-test" in checked.stdout and str(dst) in checked.stdout


@pytest.mark.timeout(180)
def test_a_remote_target_keeps_versions_through_rsync_backup(tmp_path, sshd, daemon_factory):
    from helpers import remote_pair
    from sshd import ssh_config_block

    area = tmp_path / "remote-versions"
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True, versions={"path": str(area), "max_age": "10d"})
    now = time.time_ns()
    _old_versions(area, "old/x.txt", [DAY, 20 * DAY, 40 * DAY], now)  # pruned on the host through the master
    (src / "sub").mkdir()
    (src / "sub" / "a.txt").write_bytes(b"one")
    os.chmod(src / "sub" / "a.txt", 0o640)
    os.utime(src / "sub" / "a.txt", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    (src / "gone.txt").write_bytes(b"deleted later")
    (src / "gone.d").mkdir()  # rsync's --backup-dir keeps no directory: no version of it (README)
    (src / "mover.txt").write_bytes(b"moves over")
    (src / "landed.txt").write_bytes(b"moved onto")
    config = write_config(tmp_path, [folder], ssh=ssh_config_block(sshd))
    d = daemon_factory(config)
    d.wait_for("remote_up", 30)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    pruned = d.wait_for("versions_pruned", 30, folder="data")[0]
    assert (pruned["versions"], pruned["bytes"], pruned["kept"]) == (2, 20, 1), pruned
    assert len(versions_of(area, "old/x.txt")) == 1
    (src / "sub" / "a.txt").write_bytes(b"two")
    (src / "gone.txt").unlink()
    (src / "gone.d").rmdir()
    os.replace(src / "mover.txt", src / "landed.txt")  # replayed as mv over ssh: what it lands on is kept
    wait_mirrored(src, dst, 30)
    d.wait_for("file_mirrored", 10, path="landed.txt", renamed_from="mover.txt")
    assert [c for _, c in versions_of(area, "landed.txt")] == [b"moved onto"]
    assert [c for _, c in versions_of(area, "sub/a.txt")] == [b"one"]
    assert [c for _, c in versions_of(area, "gone.txt")] == [b"deleted later"]
    assert not (dst / "remote-versions").exists() and not (area / "gone.d").exists()
    replaced = d.wait_for("file_mirrored", path="sub/a.txt", count=2)[-1]
    deleted = d.wait_for("file_deleted", path="gone.txt")[0]
    for rec, path in ((replaced, "sub/a.txt"), (deleted, "gone.txt")):
        assert (area / rec["version_kept"]).is_file() and rec["version_kept"].startswith(path + "~"), rec
    # Listed and restored from the host, over ssh (a login of the command's own).
    listed = fm("versions", "-c", str(config), "--folder", "data", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((r["path"], r["size"]) for r in rows) == [
        ("gone.txt", 13), ("landed.txt", 10), ("old/x.txt", 10), ("sub/a.txt", 3)], rows
    one = next(r for r in rows if r["path"] == "sub/a.txt")
    # "two" was written before "one" left the mirror: no --force needed
    done = fm("restore", "-c", str(config), "--folder", "data", "sub/a.txt", "--at", one["time"])
    assert done.returncode == 0, done.stderr
    versions = status(config)["folders"][0]["versions"]
    assert versions["counted"] and versions["count"] >= 3, versions  # the pass's 1, and those kept since
    done = fm("restore", "-c", str(config), "--folder", "data", "gone.txt")
    assert done.returncode == 0, done.stderr
    st = (src / "sub" / "a.txt").stat()
    assert ((src / "sub" / "a.txt").read_bytes(), st.st_mode & 0o777, st.st_mtime_ns) == (
        b"one", 0o640, 1_700_000_000_000_000_000)
    assert (src / "gone.txt").read_bytes() == b"deleted later"
    wait_mirrored(src, dst, 30)


def test_a_reload_checks_the_versions_area_and_keeps_serving_the_others(tmp_path, daemon_factory):
    import signal

    import yaml

    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    src, dst, spec = pair(tmp_path, delete=True, versions={})
    other_src, other_dst, other = pair(tmp_path, "other", delete=True)
    config = write_config(tmp_path, [spec, other])
    d = daemon_factory(config)
    d.wait_ready()
    # Inside the target: the config is refused as a whole, the running one goes on.
    doc = yaml.safe_load(config.read_text())
    doc["folders"][0]["versions"] = {"path": str(dst / "v")}
    config.write_text(yaml.safe_dump(doc))
    d.send(signal.SIGHUP)
    bad = d.wait_for("config_invalid")[0]
    assert "versions.path" in bad["error"] and "inside its target" in bad["error"], bad
    # On another file system: that folder is not served, naming both paths; the other one is.
    area = f"/dev/shm/fm-versions-{os.getpid()}"
    doc["folders"][0]["versions"] = {"path": area}
    config.write_text(yaml.safe_dump(doc))
    d.send(signal.SIGHUP)
    try:
        refused = d.wait_for("folder_unusable", folder="data")[0]
        assert area in refused["error"] and str(dst) in refused["error"], refused
        (other_src / "still.txt").write_bytes(b"served")
        wait_mirrored(other_src, other_dst)
    finally:
        shutil.rmtree(area, ignore_errors=True)
