"""The command line as a process: check, sync, --help, finding the config, exit codes, fix texts.

Its pure parts (find_config, the access probes, fix_for) are tested in unit/test_cli.py.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from foldermirror.cli import CONFIG_ENV, DEFAULT_CONFIG
from helpers import ENV, LIMITED, REPO, fm, pair, tree_diff, write_config

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def records(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder any user may enter (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="fm-check-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)  # as root: modes do not stop it


def unprivileged() -> tuple[Sequence[str], str]:
    """A command prefix under which permission bits bind, and the user `check` then names.

    nobody when it can run this interpreter; otherwise (an interpreter under /root, say) uid 0
    without the capabilities that bypass permission bits, which they bind just the same.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to run check as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        nobody = None
    if nobody is not None:
        probe = subprocess.run([*NOBODY, sys.executable, "-c", "import foldermirror.cli, structlog, yaml"],
                               env=ENV, capture_output=True, timeout=30, cwd="/")
        if probe.returncode == 0:
            return NOBODY, f"nobody (uid {nobody.pw_uid})"
    return LIMITED, "root (uid 0)"


def listing(root: Path) -> list[str]:
    """Every path under root with its mode: what `check` must leave as it found it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out.append(f"{os.path.relpath(full, root)} {os.lstat(full).st_mode:o}")
    return sorted(out)


def config_in(base: Path, folders: list[dict]) -> Path:
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump({"workers": 1, "folders": folders}))
    path.chmod(0o644)
    return path


def test_check_prints_resolved_pairs(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True, exclude=["*.tmp"])
    r = fm("check", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "folders[0]:" in lines and "  name:                data" in lines, r.stdout
    assert f"  source:              {src}" in lines and f"  target:              {dst}" in lines, r.stdout
    assert "  exclude:             *.tmp" in lines and "  delete:              true" in lines, r.stdout


def test_demo_config_is_valid():
    r = fm("check", "--config", str(REPO / "config" / "demo.yaml"))
    assert r.returncode == 0, r.stderr
    assert "demo/source" in r.stdout


@pytest.mark.parametrize("command", ["run", "check", "sync"])
def test_config_errors_exit_78_with_one_message(tmp_path, command):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("workers: \"four\"\nfolders: []\n")
    r = fm(command, "--config", str(cfg))
    assert r.returncode == 78, r
    assert f"{cfg}:1:10: workers: expected a whole number, got 'four'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_exits_78(tmp_path):
    r = fm("run", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 78 and "config file not found" in r.stderr


@pytest.mark.parametrize("command", ["run", "check", "sync", "status", "rescan"])
def test_help_explains_every_option(command):
    r = fm(command, "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--config" in text and "FILE" in text
    assert f"${CONFIG_ENV} when set, else {DEFAULT_CONFIG}" in text, text


def test_sync_catches_up_once_and_exits(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(200):
        (src / f"d{i % 7}").mkdir(exist_ok=True)
        (src / f"d{i % 7}" / f"f{i}").write_bytes(os.urandom(i))
    dst.mkdir()
    (dst / "extra").write_bytes(b"not in the source")
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 0, r.stderr
    assert tree_diff(src, dst) == []
    events = [json.loads(line)["event"] for line in r.stderr.splitlines() if line.startswith("{")]
    assert "sync_finished" in events and "daemon_ready" not in events
    finished = [json.loads(line) for line in r.stderr.splitlines() if '"sync_finished"' in line][0]
    assert finished["files_mirrored"] >= 200
    again = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    again_finished = [json.loads(line) for line in again.stderr.splitlines() if '"sync_finished"' in line][0]
    assert again_finished["files_mirrored"] == 0 and again_finished["differences"] == 0


def test_sync_reports_failures_with_exit_1(tmp_path):
    src, dst, spec = pair(tmp_path)  # delete: false, so a conflicting target file is kept
    (src / "sub").mkdir()
    (src / "sub" / "f").write_bytes(b"x")
    (src / "fine").write_bytes(b"fine")
    dst.mkdir()
    (dst / "sub").write_bytes(b"a file where the source has a folder")
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 1, r.stderr
    failed = [json.loads(line) for line in r.stderr.splitlines() if '"mirror_failed"' in line]
    assert failed and failed[0]["path"].startswith("sub") and failed[0]["will_retry"] is False, failed
    assert (dst / "fine").read_bytes() == b"fine"
    assert (dst / "sub").read_bytes() == b"a file where the source has a folder"


# -- finding the config ------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "check", "sync", "status", "rescan"])
def test_every_command_without_a_config_says_where_to_put_one(tmp_path, command):
    gone = tmp_path / "gone.yaml"
    r = fm(command, env={CONFIG_ENV: str(gone)}, timeout=30)
    assert r.returncode == 78, r
    assert r.stderr.startswith(f"foldermirror: error: no config file: {CONFIG_ENV} names {gone}"), r.stderr
    assert DEFAULT_CONFIG in r.stderr and "--config FILE" in r.stderr and "Traceback" not in r.stderr


def test_commands_read_the_variable_and_the_option_beats_it(tmp_path):
    src, dst, spec = pair(tmp_path)
    good = write_config(tmp_path, [spec])
    r = fm("check", env={CONFIG_ENV: str(good)}, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"config: {good}" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text('workers: "four"\nfolders: []\n')
    r = fm("check", "--config", str(good), env={CONFIG_ENV: str(bad)}, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"config: {good}" in r.stdout
    r = fm("check", "-c", str(bad), env={CONFIG_ENV: str(good)}, timeout=30)
    assert r.returncode == 78 and f"{bad}:1:10" in r.stderr, r


# -- check: access for the user who runs it ---------------------------------------------------

def test_check_names_each_folder_the_user_cannot_serve_and_creates_nothing(open_dir):
    prefix, user = unprivileged()
    base = open_dir
    open_, ro = base / "open", base / "ro"
    for d, mode in ((open_, 0o777), (ro, 0o555)):
        d.mkdir()
        d.chmod(mode)
    closed = base / "closed"
    closed.mkdir()
    (closed / "f").write_bytes(b"x")
    closed.chmod(0)
    sources = {}
    for name in ("readonly", "full", "fine"):
        sources[name] = base / f"{name}-src"
        sources[name].mkdir()
        (sources[name] / "f").write_bytes(b"x")
    existing_ro = base / "existing-ro"
    existing_ro.mkdir()
    existing_ro.chmod(0o555)
    cfg = config_in(base, [
        {"name": "closed", "source": str(closed), "target": str(open_ / "closed")},
        {"name": "readonly", "source": str(sources["readonly"]), "target": str(ro / "copy")},
        {"name": "full", "source": str(sources["full"]), "target": str(existing_ro)},
        {"name": "newsrc", "source": str(ro / "new-src"), "target": str(open_ / "newsrc"), "create": True},
        {"name": "fine", "source": str(sources["fine"]), "target": str(open_ / "fine")},
    ])
    before = listing(base)
    r = fm("check", "--config", str(cfg), prefix=prefix, timeout=60)
    assert r.returncode == 1, r
    lines = r.stdout.splitlines()
    denied = f"by {user}: Permission denied (EACCES)"
    assert f"folder closed: cannot be served: source {closed} is not readable {denied}" in lines, r.stdout
    assert (f"folder readonly: cannot be served: cannot create target {ro / 'copy'}: {ro} is not writable "
            f"{denied}") in lines, r.stdout
    assert f"folder full: cannot be served: target {existing_ro} is not writable {denied}" in lines, r.stdout
    assert (f"folder newsrc: cannot be served: cannot create source {ro / 'new-src'}: {ro} is not writable "
            f"{denied}") in lines, r.stdout
    assert (f"folder fine: ok (source readable; target {open_ / 'fine'} does not exist yet: run creates it in "
            f"{open_}, writable by {user})") in lines, r.stdout
    assert f"4 of 5 folders cannot be served by {user}: closed, readonly, full, newsrc" in r.stderr, r.stderr
    assert listing(base) == before  # no target or source made, no probe file left


def test_check_proves_access_and_creates_nothing(open_dir):
    prefix, user = unprivileged()
    base = open_dir
    open_ = base / "open"
    open_.mkdir()
    open_.chmod(0o777)
    src = base / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    existing = open_ / "existing"
    existing.mkdir()
    existing.chmod(0o777)
    cfg = config_in(base, [
        {"name": "new", "source": str(src), "target": str(open_ / "deep" / "copy")},
        {"name": "existing", "source": str(open_ / "new-src"), "target": str(existing), "create": True},
    ])
    before = listing(base)
    r = fm("check", "--config", str(cfg), prefix=prefix, timeout=60)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert (f"folder new: ok (source readable; target {open_ / 'deep' / 'copy'} does not exist yet: run creates it "
            f"in {open_}, writable by {user})") in lines, r.stdout
    assert (f"folder existing: ok (source {open_ / 'new-src'} does not exist yet: run creates it in {open_}, "
            f"writable by {user}; target writable by {user})") in lines, r.stdout
    assert f"folders[0]:\n  name:                new\n  source:              {src}\n" in r.stdout  # the resolved config
    assert listing(base) == before
    assert not (open_ / "deep").exists() and not (open_ / "new-src").exists()


# -- fix texts fit the mode ------------------------------------------------------------------

def test_sync_never_says_reload(open_dir):
    prefix, _ = unprivileged()
    base = open_dir
    (base / "blocker").write_bytes(b"a file where a folder of the target path should be")
    broken_src = base / "broken-src"
    private, private_dst = base / "private-src", base / "private-dst"
    emptied, emptied_dst = base / "emptied-src", base / "emptied-dst"
    for d in (broken_src, private, emptied, private_dst, emptied_dst):
        d.mkdir()
        d.chmod(0o777)
    (private / "secret").write_bytes(b"secret")
    (private / "secret").chmod(0)
    (private / "locked").mkdir(mode=0)
    (private / "fine").write_bytes(b"fine")
    for i in range(3):
        (emptied_dst / f"old{i}").write_bytes(b"old")
    cfg = config_in(base, [
        {"name": "broken", "source": str(broken_src), "target": str(base / "blocker" / "copy")},
        {"name": "private", "source": str(private), "target": str(private_dst)},
        {"name": "emptied", "source": str(emptied), "target": str(emptied_dst), "delete": True},
    ])
    r = fm("sync", "--config", str(cfg), prefix=prefix, timeout=90)
    assert r.returncode == 1, r
    lines = records(r.stderr)
    by_event = {}
    for rec in lines:
        by_event.setdefault(rec["event"], []).append(rec)
    unusable, = by_event["folder_unusable"]
    assert unusable["folder"] == "broken" and "run sync again" in unusable["fix"], unusable
    failed = [x for x in by_event["mirror_failed"] if x["path"] == "secret"]
    assert failed and failed[0]["errno"] == "EACCES" and failed[0]["will_retry"] is False, by_event["mirror_failed"]
    assert "run sync again" in failed[0]["fix"], failed
    held, = by_event["mass_delete_held"]
    assert "run sync again" in held["fix"], held
    unreadable, = by_event["source_unreadable"]
    assert unreadable["path"] == "locked" and "run sync again" in unreadable["fix"], unreadable
    assert (private_dst / "fine").read_bytes() == b"fine"
    for rec in lines:
        if rec.get("level") in ("warning", "error"):
            fix = rec.get("fix", "")
            assert fix, rec
            assert not any(word in fix for word in ("reload", "SIGHUP", "systemctl", "rescan")), rec
            if rec.get("will_retry") is False:
                assert "retried" not in fix, rec
