"""Helpers to drive a real daemon process on real folders and read its JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# Import this checkout's package even when another checkout is pip-installed in editable mode.
sys.path.insert(0, str(REPO / "daemon"))
TEMP_MARK = ".foldermirror-"
LOCK_NAME = ".foldermirror.lock"  # each target's lock file (targetlock.py): not mirrored data
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID")


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
        # What systemd may have set for the process running the tests is not the daemon's.
        full_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(REPO / "daemon") + os.pathsep + full_env.get("PYTHONPATH", "")
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
        for t in self._readers:
            t.join(5)
        return rc

    def worker_pids(self) -> list[int]:
        """Pool workers: grandchildren through the fork server, found by their parent pid."""
        kids = _children(self.proc.pid)
        out = []
        for k in kids:
            out.extend(_children(k))
        return out


def _children(pid: int) -> list[int]:
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


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Daemon:
        d = Daemon(config, *args, env=env, prefix=prefix)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    # internal_error is a bug the daemon survived: whatever the test was about, it fails.
    bugs = [r for d in started for r in d.events("internal_error")]
    assert not bugs, bugs


def snapshot(root: Path, delete: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything the oracle compares: type, bytes, mode and mtime of files; link targets.

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
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", Path(full).read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("special",)
    return out


def tree_diff(src: Path, dst: Path, delete: bool = True, exclude: Callable[[str], bool] = lambda p: False) -> list[str]:
    a = {k: v for k, v in snapshot(src).items() if v[0] != "special" and not exclude(k)}
    b = snapshot(dst) if dst.exists() else {}
    problems = []
    for rel, want in sorted(a.items()):
        got = b.get(rel)
        if got != want:
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
        return f"file({len(data)} bytes {data[:20]!r}, mode {oct(v[2])}, mtime {v[3]})"
    return repr(v)


def wait_mirrored(src: Path, dst: Path, timeout: float = 30, delete: bool = True,
                  exclude: Callable[[str], bool] = lambda p: False) -> None:
    last: list[list[str]] = [[]]

    def ok() -> bool:
        try:
            last[0] = tree_diff(src, dst, delete, exclude)
        except FileNotFoundError as exc:  # a temp file vanished mid-walk: look again
            last[0] = [str(exc)]
            return False
        return not last[0]

    wait_until(ok, timeout, lambda: "trees differ:\n" + "\n".join(last[0][:30]))
