"""Helpers shared by every level of tests (unit/, daemon/, system/) and by nothing else.

Drive a real daemon process on real folders and read its JSON log lines (Daemon), run the
CLI (fm), wait for a condition with a deadline (wait_until), compare trees (snapshot,
tree_diff, wait_mirrored). The fixtures that use them are in conftest.py. pytest finds this
module through `pythonpath` in pyproject.toml; daemon subprocesses get this checkout's
daemon/ through PYTHONPATH (ENV), whatever is pip-installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DAEMON_PATH = str(REPO / "daemon")
# For a probe run with `python -S` (no site: no .pth file imports anything first): the
# site-packages folders go on its path all the same, their .pth files unread, so that a
# third-party import shows up in sys.modules instead of failing as missing.
SITE_PACKAGES = [*site.getsitepackages(), site.getusersitepackages()]
TEMP_MARK = ".foldermirror-"
LOCK_NAME = ".foldermirror.lock"  # each target's lock file (targetlock.py): not mirrored data
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")
CONFIG_ENV = "FOLDERMIRROR_CONFIG"  # foldermirror.cli.CONFIG_ENV (test_cli checks they agree)
IS_ROOT = os.geteuid() == 0
# uid 0 without the capabilities that bypass permission bits: permission errors bite again
# (a mode-000 directory is closed, a read-only target refuses writes).
LIMITED = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-chown")


def with_daemon_path(pythonpath: str | None) -> str:
    """PYTHONPATH with this checkout's daemon/ first (another checkout may be pip-installed)."""
    return DAEMON_PATH + (os.pathsep + pythonpath if pythonpath else "")


# The environment of every process a test starts: this checkout's package; neither what
# systemd may have set for the process running the tests nor a config named by the caller's
# FOLDERMIRROR_CONFIG (the tests set that variable themselves where they mean to).
ENV = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV and k != CONFIG_ENV}
ENV["PYTHONPATH"] = with_daemon_path(os.environ.get("PYTHONPATH"))


def fm(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
       prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m foldermirror ARGS` in a process of its own (prefix: e.g. setpriv)."""
    return subprocess.run([*prefix, sys.executable, "-m", "foldermirror", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_settled(config: Path, timeout: float = 30) -> None:
    """Until the daemon running `config` has nothing pending or in flight. A rename whose
    origin is still in flight (its batch not recorded yet, though the target may already
    match) is replayed as copy + delete: a test of rename replay waits for this first."""
    def settled() -> bool:
        return all(f["pending"] == 0 and f["in_flight"] == 0 for f in status(config)["folders"])
    wait_until(settled, timeout, lambda: f"still pending or in flight: {status(config)['folders']}")


def status(config: Path) -> dict[str, Any]:
    """`foldermirror status --json` of the daemon running `config`: the whole snapshot."""
    r = fm("status", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def setpriv_or_skip() -> tuple[str, ...]:
    """The LIMITED prefix, or skip the test when it cannot mean anything here."""
    if not IS_ROOT:
        pytest.skip("needs root: runs the daemon as uid 0 without DAC capabilities, and chowns")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return LIMITED


def wait_until(predicate: Callable[[], Any], timeout: float, describe: Callable[[], str] | str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `describe` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = describe() if callable(describe) else describe
            pytest.fail(f"condition not met within {timeout}s: {detail}")
        time.sleep(0.01)  # sleep-ok: poll interval of a deadline-bounded wait


def write_config(tmp_path: Path, folders: list[dict[str, Any]], **top: Any) -> Path:
    data: dict[str, Any] = {"workers": 2, **top, "folders": folders}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def pair(tmp_path: Path, name: str = "data", **opts: Any) -> tuple[Path, Path, dict[str, Any]]:
    src, dst = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
    src.mkdir(exist_ok=True)
    return src, dst, {"name": name, "source": str(src), "target": str(dst), **opts}


class Daemon:
    """A `python -m foldermirror run` process whose stderr JSON lines are collected.

    `prefix` is a command prefix, e.g. setpriv to run without some capabilities.
    """

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._cond = threading.Condition()
        full_env = {**ENV, **(env or {})}
        if env and "PYTHONPATH" in env:
            full_env["PYTHONPATH"] = with_daemon_path(env["PYTHONPATH"])
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "foldermirror", "run", "--config", str(config), "--log-format", "json", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
        )
        self._readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                         for s in (self.proc.stderr, self.proc.stdout)]
        for t in self._readers:
            t.start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError
                    self.records.append(record)
                except ValueError:
                    self.other_lines.append(line)
                self._cond.notify_all()

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r.get("event") == name
                    and all(r.get(k) == v for k, v in match.items())]

    def wait_for(self, name: str, timeout: float = 30, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            got = self.events(name, **match)
            return got if len(got) >= count else None
        return wait_until(found, timeout, lambda: f"no {count}× {name} {match}; last lines:\n{self.tail()}")

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for("daemon_ready", timeout)
        self.wait_for("sync_finished", timeout, reason="startup",
                      count=len(yaml.safe_load(self.config.read_text())["folders"]))

    def tail(self, n: int = 25) -> str:
        with self._cond:
            lines = [json.dumps(r) for r in self.records[-n:]] + self.other_lines[-10:]
        return "\n".join(lines)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"daemon did not stop within {timeout}s after {signal.Signals(sig).name}:\n{self.tail()}")
        self.close()
        return rc

    def close(self) -> None:
        """Once the process is gone: collect the last lines and close the pipes."""
        for t, stream in zip(self._readers, (self.proc.stderr, self.proc.stdout), strict=True):
            t.join(5)
            if not t.is_alive() and stream is not None:  # a reader still in read() holds the stream
                stream.close()

    def worker_pids(self) -> list[int]:
        """Pool workers: grandchildren through the fork server, found by their parent pid."""
        kids = children(self.proc.pid)
        out = []
        for k in kids:
            out.extend(children(k))
        return out


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            out.append(int(entry))
    return out


# What a folder may keep beside bytes, mode and mtime (config.PRESERVABLE), as the oracle reads it.
ALL_PRESERVED = ("xattrs", "acls", "hardlinks", "sparse", "owner")
# Blocks of 512 bytes a sparse file's mirror may differ by from its source (file systems
# round allocations to their block size and may preallocate a little).
SPARSE_TOLERANCE_BLOCKS = 64


def kept_attrs(path: str, preserve: Sequence[str], symlink: bool = False) -> tuple[tuple[str, bytes], ...]:
    """The extended attributes a folder with `preserve` mirrors, sorted: user.* (xattrs; not on
    a symlink, where Linux refuses them), trusted.* and security.* as root (xattrs), and the
    system.posix_acl_* ACLs (acls; not on a symlink)."""
    if not ("xattrs" in preserve or "acls" in preserve):
        return ()
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in names:
        if name.startswith("system.posix_acl_"):
            wanted = "acls" in preserve and not symlink
        elif name.startswith("user."):
            wanted = "xattrs" in preserve and not symlink
        elif name.startswith(("trusted.", "security.")):
            wanted = "xattrs" in preserve and IS_ROOT
        else:
            wanted = False
        if wanted:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return tuple(sorted(out))


def snapshot(root: Path, preserve: Sequence[str] = ()) -> dict[str, tuple[Any, ...]]:
    """Everything the oracle compares: type, bytes, mode and mtime of files; link targets;
    and what `preserve` names: kept xattrs and ACLs, owner (uid, gid) and, for "sparse", the
    allocated blocks of files (compared within SPARSE_TOLERANCE_BLOCKS by tree_diff; last).

    The lock file's name is left out at every depth, as the daemon reserves it: in a
    target it is the daemon's lock, not a mirror of anything.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if n != LOCK_NAME]
        for name in dirnames + filenames:
            if name == LOCK_NAME:
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            link = stat.S_ISLNK(st.st_mode)
            kept: tuple[Any, ...] = ()
            if preserve:
                kept = (kept_attrs(full, preserve, link),) + (((st.st_uid, st.st_gid),) if "owner" in preserve else ())
            if link:
                out[rel] = ("symlink", os.readlink(full), *kept)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), *kept)
            elif stat.S_ISREG(st.st_mode):
                blocks = (st.st_blocks,) if "sparse" in preserve else ()
                out[rel] = ("file", Path(full).read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns, *kept, *blocks)
            else:
                out[rel] = ("special",)
    return out


def _same(want: tuple[Any, ...], got: tuple[Any, ...] | None, sparse: bool) -> bool:
    if not (sparse and want[0] == "file" and got is not None and got[0] == "file"):
        return got == want
    return want[:-1] == got[:-1] and abs(want[-1] - got[-1]) <= SPARSE_TOLERANCE_BLOCKS


def link_groups(root: Path, names: set[str]) -> set[frozenset[str]]:
    """The names among `names` (regular files under root) that share an inode with another,
    grouped by inode."""
    by_inode: dict[tuple[int, int], set[str]] = {}
    for rel in names:
        try:
            st = os.lstat(root / rel)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            by_inode.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return {frozenset(g) for g in by_inode.values() if len(g) > 1}


def tree_diff(src: Path, dst: Path, delete: bool = True, exclude: Callable[[str], bool] = lambda p: False,
              preserve: Sequence[str] = (), hardlinks: bool = True) -> list[str]:
    """What keeps dst from being a mirror of src. `preserve`: the folder's preserve:, for what
    else is compared (see snapshot). `hardlinks` (the folder keeps them, as by default): the
    names of the source that share an inode share one in the target, and no other names of
    the target do."""
    a = {k: v for k, v in snapshot(src, preserve).items() if v[0] != "special" and not exclude(k)}
    b = snapshot(dst, preserve) if dst.exists() else {}
    problems = []
    if hardlinks:
        files = {k for k, v in a.items() if v[0] == "file"}
        want, got = link_groups(src, files), link_groups(dst, files)
        for g in sorted(want - got, key=sorted):
            problems.append(f"{', '.join(sorted(g))}: one inode in the source, not in the target")
        for g in sorted(got - want, key=sorted):
            problems.append(f"{', '.join(sorted(g))}: one inode in the target, not in the source")
    for rel, want in sorted(a.items()):
        got = b.get(rel)
        if not _same(want, got, "sparse" in preserve):
            problems.append(f"{rel}: source {_short(want)} target {_short(got)}")
    for rel in sorted(set(b) - set(a)):
        if TEMP_MARK in rel:
            problems.append(f"{rel}: temp file left in target")
        elif delete and not exclude(rel):
            problems.append(f"{rel}: extra in target")
    return problems


def _short(v: Any) -> str:
    if v is None:
        return "absent"
    if v[0] == "file":
        data = v[1]
        return f"file({len(data)} bytes {data[:20]!r}, mode {oct(v[2])}, mtime {v[3]}" + \
            "".join(f", {x!r}" for x in v[4:]) + ")"
    return repr(v)


def wait_mirrored(src: Path, dst: Path, timeout: float = 30, delete: bool = True,
                  exclude: Callable[[str], bool] = lambda p: False, preserve: Sequence[str] = (),
                  hardlinks: bool = True) -> None:
    last: list[list[str]] = [[]]

    def ok() -> bool:
        try:
            last[0] = tree_diff(src, dst, delete, exclude, preserve, hardlinks)
        except FileNotFoundError as exc:  # a temp file vanished mid-walk: look again
            last[0] = [str(exc)]
            return False
        return not last[0]

    wait_until(ok, timeout, lambda: "trees differ:\n" + "\n".join(last[0][:30]))


def lock_holder(target: Path) -> dict[str, Any]:
    """What a target's lock file says about the process holding it."""
    return json.loads((target / LOCK_NAME).read_text())


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def temps(root: Path) -> list[str]:
    """Every temp file or folder of the daemon's (TEMP_MARK) below root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames if TEMP_MARK in n]
    return out


def still_mirroring(d: Daemon, src: Path, dst: Path, delete: bool = True, sub: str = "") -> None:
    """The daemon is alive, and a file written now is mirrored (with everything else)."""
    assert d.proc.poll() is None, f"the daemon died:\n{d.tail()}"
    where = src / sub if sub else src
    (where / "zz-written-afterwards").write_bytes(b"after the fault " + os.urandom(8))
    wait_mirrored(src, dst, timeout=60, delete=delete)
    assert d.proc.poll() is None, f"the daemon died:\n{d.tail()}"


def never_within(predicate: Callable[[], Any], seconds: float, describe: Callable[[], str] | str = "") -> None:
    """Watch `predicate` for `seconds`: fail at once, with `describe`, if it ever turns truthy.

    The way to show that something does NOT happen (a ping, a wake-up) within a window: the
    window is the point, so it is not a wait for a condition; a breach ends it early.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            detail = describe() if callable(describe) else describe
            pytest.fail(f"happened within {seconds}s, and must not: {detail}")
        time.sleep(0.01)  # sleep-ok: poll interval of a deadline-bounded watch


# -- remote targets (tests/sshd.py is the server) -----------------------------------------------
def remote_pair(tmp_path: Path, server: Any, name: str = "data", **opts: Any) -> tuple[Path, Path, dict[str, Any]]:
    """A source folder and a folder entry whose target is `server`'s ssh:// URL of a folder
    under tmp_path (the "remote" machine is this one)."""
    src, dst = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
    src.mkdir()
    return src, dst, {"name": name, "source": str(src), "target": server.url(str(dst)), **opts}


def remote_temps(root: Path) -> list[str]:
    """rsync's temp files (.NAME.XXXXXX) and partial dir, and the daemon's, anywhere under root."""
    found = temps(root)
    for dirpath, _dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(".") and len(f) > 8 and f[-7] == "."]
    return found


# -- metrics ----------------------------------------------------------------------------------
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]  # sample name → sorted labels → value


def scrape_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(address: str) -> Samples:
    return samples(scrape_text(address))


# Prometheus's own linter of the text format and its naming conventions (units, _total, HELP).
# Debian ships it in the prometheus package; .ci/run takes only this binary out of it.
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not on PATH (Debian's prometheus package has it; .ci/run fetches it)"


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says of an exposition: "" when it is clean."""
    assert PROMTOOL is not None, NO_PROMTOOL
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    said = (r.stdout + r.stderr).strip()
    return "" if r.returncode == 0 and not said else f"exit {r.returncode}: {said}"
