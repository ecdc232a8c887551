"""`sync` as a person runs it: on a real pseudo-terminal (tests/terminal.py), and `sync --dry-run`'s
machine-readable forms (NDJSON, --exit-code) and --folder.

The bar's line, its width and the log-level rules are unit-tested in unit/test_progress.py; here
the screen is read as a terminal shows it: mid-way it holds the bar and no per-file lines, a
failure's line stands above the bar, the last screen holds the totals, Ctrl-C exits 130.
A big sparse file copied slowly (the slow_copy fault: 1 MiB per 50 ms) keeps the sync going
long enough to look at it mid-way, without any sleep.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from foldermirror.pipeline.pool import process_alive
from helpers import descendants, fm, pair, temps, tree_diff, write_config
from terminal import PtyProcess

WIDTH = 100
BAR = re.compile(r"^(?:.*? )?\d+%  \[[=> ]+\]  [\d,]+/[\d,]+ files")
CSI = re.compile(r"\x1b\[[0-9;?]*[@-~]")


def tree(src: Path, files: int, slow_mib: int) -> None:
    for i in range(files):
        d = src / f"d{i % 20}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(100 + i % 900))
    with open(src / "slow", "wb") as f:
        f.truncate(slow_mib << 20)  # sparse: no disk written, but read (and copied) 1 MiB at a time


@pytest.fixture
def spawn() -> Iterator[list[PtyProcess]]:
    started: list[PtyProcess] = []
    yield started
    for p in started:
        p.close()


def sync_on_pty(spawn: list[PtyProcess], config: Path, *args: str, slow: bool = True) -> PtyProcess:
    """`sync` on a pseudo-terminal; with `slow`, a file named "slow" is copied slowly (a fault)."""
    env = {"FOLDERMIRROR_FAULTS": "slow_copy:slow"} if slow else {}
    p = PtyProcess([sys.executable, "-m", "foldermirror", "sync", "--config", str(config), *args], width=WIDTH,
                   env=env)
    spawn.append(p)
    return p


def below_faults_warning(lines: list[str]) -> list[str]:
    """The screen's lines after the faults_enabled warning a daemon with a fault on starts with
    (one log line, wrapped over several rows), which is not what these tests look at."""
    start = next((i for i, line in enumerate(lines) if "faults_enabled" in line), None)
    if start is None:
        return lines
    end = next(i for i in range(start, len(lines)) if "unless this is a test" in lines[i])
    return lines[:start] + lines[end + 1:]


def bar_mid_way(lines: list[str]) -> bool:
    return bool(lines) and BAR.match(lines[-1]) is not None and "100%" not in lines[-1]


@pytest.mark.timeout(90)
def test_the_screen_holds_the_bar_mid_way_and_the_totals_at_the_end(tmp_path, spawn):
    src, dst, spec = pair(tmp_path, name="bulk")
    tree(src, 2000, slow_mib=40)
    p = sync_on_pty(spawn, write_config(tmp_path, [spec]))
    mid = below_faults_warning(p.wait_screen(bar_mid_way, 60))
    assert len(mid) == 1, mid  # the bar alone: no log line above it
    assert len(mid[-1]) < WIDTH and re.search(r"[\d,]+/2,001 files  [\d.]+/41\.\d MiB", mid[-1]), mid
    assert p.wait(60) == 0, p.lines()
    final = below_faults_warning(p.lines())
    assert len(final) == 1 and re.fullmatch(r"sync done: 2,001 files \(41\.\d MiB\) in [\d.]+m?s, 0 failed",
                                            final[0]), final
    raw = p.raw()
    assert "comparing: " in raw  # from the first moment
    assert "file_mirrored" not in raw and "sync_progress" not in raw
    assert tree_diff(src, dst) == []


@pytest.mark.timeout(90)
def test_a_failure_prints_above_the_bar_and_counts_in_the_summary(tmp_path, spawn):
    src, dst, spec = pair(tmp_path)  # delete: false keeps what stands in the way (as root, too)
    (src / "sub").mkdir()
    (src / "sub" / "f").write_bytes(b"x")
    dst.mkdir()
    (dst / "sub").write_bytes(b"a file where the source has a folder")
    # The walk yields a directory's entries before those of the directories under it, so the
    # failing "sub" comes before zz's 100 files, and those before the slow copy: a worker sends
    # results every 32 items, so the failure's line comes out while the slow copy keeps the bar up.
    (src / "zz" / "deeper").mkdir(parents=True)
    for i in range(100):
        (src / "zz" / f"f{i}").write_bytes(b"small")
    with open(src / "zz" / "deeper" / "slow", "wb") as f:
        f.truncate(60 << 20)
    p = sync_on_pty(spawn, write_config(tmp_path, [spec]))
    mid = below_faults_warning(
        p.wait_screen(lambda lines: bar_mid_way(lines) and any("mirror_failed" in line for line in lines), 60))
    assert "mirror_failed" in mid[0] and "path=sub" in mid[0], mid  # the log line first, the bar under it
    assert not any(BAR.match(line) for line in mid[:-1]), mid  # never drawn through a log line
    assert p.wait(60) == 1, p.lines()
    final = below_faults_warning(p.lines())
    assert re.fullmatch(r"sync done: 101 files \(60\.\d MiB\) in [\d.]+m?s, 2 failed \(see above\)", final[-1]), final
    assert any("mirror_failed" in line for line in final[:-1]) and not any(BAR.match(line) for line in final), final
    assert "file_mirrored" not in p.raw()


@pytest.mark.timeout(90)
def test_ctrl_c_stops_the_pool_and_says_how_far_it_got(tmp_path, spawn):
    src, dst, spec = pair(tmp_path)
    tree(src, 300, slow_mib=200)  # 10 s of copying: far longer than the test waits
    p = sync_on_pty(spawn, write_config(tmp_path, [spec], stop_grace="1s"))
    p.wait_screen(bar_mid_way, 60)
    workers = descendants(p.proc.pid)
    assert workers
    p.interrupt()
    assert p.wait(30) == 130, p.lines()
    final = p.lines()
    m = re.fullmatch(r"interrupted: ([\d,]+) of 301 files copied", final[-1])
    assert m and int(m.group(1).replace(",", "")) < 301, final
    assert "Traceback" not in p.raw() and "KeyboardInterrupt" not in p.raw()
    assert temps(dst) == []  # the slow copy in flight was stopped and its temp file removed
    assert not [pid for pid in workers if process_alive(pid)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", ["-v", "-q"])
def test_verbose_shows_each_file_above_the_bar_and_quiet_shows_no_bar(tmp_path, spawn, flag):
    src, dst, spec = pair(tmp_path)
    tree(src, 20, slow_mib=0)
    p = sync_on_pty(spawn, write_config(tmp_path, [spec]), flag, slow=False)
    assert p.wait(60) == 0, p.lines()
    final, raw = p.lines(), p.raw()
    assert final[-1].startswith("sync done: 21 files "), final
    if flag == "-v":
        # Each line as written, not as wrapped at the terminal's width.
        assert len(re.findall(r"file_mirrored +folder=data path=\S+ kind=file", CSI.sub("", raw))) == 21, raw
    else:
        assert len(final) == 1 and "comparing" not in raw and "%  [" not in raw, raw


# -- sync --dry-run: NDJSON, --exit-code, --folder ----------------------------------------------

def test_dry_run_json_lists_each_difference_and_exit_code_says_whether_there_are_any(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True)
    other_src, other_dst, other = pair(tmp_path, name="other")
    (src / "new").write_bytes(b"12345")
    (src / "dir").mkdir()
    (src / "dir" / "inner").write_bytes(b"abc")
    (src / "changed").write_bytes(b"new content")
    (src / "link").symlink_to("new")
    (src / "same").write_bytes(b"same")
    dst.mkdir()
    (dst / "changed").write_bytes(b"old")
    (dst / "extra").write_bytes(b"only in the target")
    (other_src / "x").write_bytes(b"x")
    config = write_config(tmp_path, [spec, other])
    assert fm("sync", "--config", str(config), "--folder", "data").returncode == 0  # "same" is in place
    (dst / "changed").write_bytes(b"old")
    (dst / "extra").write_bytes(b"only in the target")
    for name in ("new", "link"):
        os.unlink(dst / name)
    os.unlink(dst / "dir" / "inner")
    os.rmdir(dst / "dir")

    r = fm("sync", "--dry-run", "--json", "--exit-code", "--config", str(config), "--folder", "data")
    assert r.returncode == 1, r
    got = sorted((json.loads(line) for line in r.stdout.splitlines()), key=lambda o: o["path"])
    assert got == [
        {"folder": "data", "action": "replace", "path": "changed", "kind": "file", "bytes": 11, "reason": "differs"},
        {"folder": "data", "action": "copy", "path": "dir", "kind": "directory", "bytes": None, "reason": "missing"},
        {"folder": "data", "action": "copy", "path": "dir/inner", "kind": "file", "bytes": 3, "reason": "missing"},
        {"folder": "data", "action": "delete", "path": "extra", "kind": "file", "bytes": 18, "reason": "extra"},
        {"folder": "data", "action": "copy", "path": "link", "kind": "symlink", "bytes": None, "reason": "missing"},
        {"folder": "data", "action": "copy", "path": "new", "kind": "file", "bytes": 5, "reason": "missing"},
    ], r.stdout
    both = fm("sync", "--dry-run", "--json", "--config", str(config))  # no --exit-code: 0 whatever it finds
    assert both.returncode == 0 and {json.loads(line)["folder"] for line in both.stdout.splitlines()} == {
        "data", "other"}, both

    assert fm("sync", "--config", str(config), "--folder", "data").returncode == 0
    clean = fm("sync", "--dry-run", "--json", "--exit-code", "--config", str(config), "--folder", "data")
    assert (clean.returncode, clean.stdout) == (0, ""), clean
    text = fm("sync", "--dry-run", "--exit-code", "--config", str(config), "--folder", "other")
    assert text.returncode == 1 and "folder other:" in text.stdout and "folder data:" not in text.stdout, text
    assert not other_dst.exists()  # --folder data left the other folder alone


def test_an_unknown_folder_is_named_with_the_known_ones(tmp_path):
    _, _, spec = pair(tmp_path)
    _, _, other = pair(tmp_path, name="other")
    config = write_config(tmp_path, [spec, other])
    for extra in ((), ("--dry-run",)):
        r = fm("sync", "--config", str(config), "--folder", "data", "--folder", "dta", *extra)
        assert r.returncode == 78, r
        assert r.stderr == (f"foldermirror: error: {config}: --folder dta: no folder of that name; did you mean "
                            "'data'? folders: data, other\n"), r.stderr
