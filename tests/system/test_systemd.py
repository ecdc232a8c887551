"""The daemon as a systemd service: the unit files, the notify protocol, reload, start-up checks.

No systemd manager is started here. The units are checked with `systemd-analyze`; the
protocol is checked by running the real daemon with NOTIFY_SOCKET bound to our own datagram
socket; the unit's seccomp filters and an unprivileged user are reproduced by confine.py.
"""

from __future__ import annotations

import ctypes.util
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foldermirror.config import DEFAULT_STOP_GRACE
from foldermirror.service import PROGRESS_INTERVAL
from helpers import (
    ENV,
    REPO,
    children,
    never_within,
    pair,
    remote_pair,
    remote_temps,
    tree_diff,
    wait_mirrored,
    wait_until,
    write_config,
)
from helpers import status as daemon_status
from sshd import ssh_config_block

UNIT = REPO / "systemd" / "foldermirror.service"
TEMPLATE = REPO / "systemd" / "foldermirror@.service"
DROP_IN = REPO / "systemd" / "remote-targets.conf"
INSTALLED_BINARY = "/opt/foldermirror/bin/foldermirror"
CONFINE = Path(__file__).resolve().parent / "confine.py"
# README "Run as a service" states this threshold; the units score 0.6 on systemd 252.
EXPOSURE_MAX = 1.0
# README "Run as a service" (remote targets) states this one for a unit with the drop-in
# remote-targets.conf; both score 1.6 on systemd 252 (1.5 with an IPAddressAllow= list).
DROP_IN_EXPOSURE_MAX = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it with apt-get install systemd)")


# -- unit files ---------------------------------------------------------------------------
def settings(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit, in order; a key given twice keeps both values."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert m, f"unexpected time span {value!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[m.group(2)]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "--no-pager", *args], capture_output=True, text=True, timeout=60)


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_systemd_analyze_verify_prints_nothing(unit, tmp_path):
    r = analyze("verify", str(installed(unit, tmp_path)))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def installed(unit: Path, tmp_path: Path, drop_in: bool = False) -> Path:
    """A copy of the unit whose ExecStart= is a stand-in (verify insists that it exists), with
    the remote-targets drop-in in NAME.d/ beside it, where systemd-analyze verify and security
    read drop-ins of a unit given as a file (as systemd does in /etc/systemd/system)."""
    text = unit.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    stand_in = tmp_path / "foldermirror"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(stand_in)))
    if drop_in:
        (tmp_path / f"{unit.name}.d").mkdir()
        shutil.copy(DROP_IN, tmp_path / f"{unit.name}.d" / DROP_IN.name)
    return copy


def exposure(unit: Path) -> tuple[float, str]:
    r = analyze("security", "--offline=yes", str(unit))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1)), r.stdout


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_security_exposure_is_at_most_the_stated_threshold(unit):
    level, out = exposure(unit)
    assert level <= EXPOSURE_MAX, out


# -- the remote-targets drop-in -----------------------------------------------------------
@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_the_drop_in_parses_and_verify_prints_nothing(unit, tmp_path):
    copy = installed(unit, tmp_path, drop_in=True)
    r = analyze("verify", str(copy))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    # verify did read it: a bad line in the same place is reported.
    bad = tmp_path / f"{unit.name}.d" / "zz-bad.conf"
    bad.write_text("[Service]\nPrivateNetwork=maybe\n")
    assert "zz-bad.conf:2" in (lambda r: r.stdout + r.stderr)(analyze("verify", str(copy)))


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_drop_in_exposure_is_at_most_its_stated_threshold(unit, tmp_path):
    level, out = exposure(installed(unit, tmp_path, drop_in=True))
    assert exposure(unit)[0] < level <= DROP_IN_EXPOSURE_MAX, out  # (above the unit's alone: it was read)
    # What it opens, and nothing more: each line is one of these findings.
    opened = {line.split()[1] for line in out.splitlines() if line.startswith("✗")} - \
             {line.split()[1] for line in exposure(unit)[1].splitlines() if line.startswith("✗")}
    assert opened == {"PrivateNetwork=", "RestrictAddressFamilies=~AF_(INET|INET6)", "IPAddressDeny=",
                      "SystemCallFilter=~@privileged"}, out


def test_the_drop_in_opens_only_the_network_and_capset():
    s = settings(DROP_IN)
    assert DROP_IN.read_text().count("[Service]") == 1 and "[Unit]" not in DROP_IN.read_text()
    assert s == {"PrivateNetwork": ["no"], "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
                 "IPAddressDeny": [""], "SystemCallFilter": ["capset"]}, s
    lines = DROP_IN.read_text().splitlines()
    for i, line in enumerate(lines):  # each setting says why, right above it
        if "=" in line and not line.startswith(("#", "[")):
            assert lines[i - 1].startswith("#"), line


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_units_set_what_the_service_relies_on(unit):
    s = {k: v[-1] for k, v in settings(unit).items()}
    assert s["Type"] == "notify"
    assert s["Restart"] == "on-failure" and s["RestartPreventExitStatus"] == "78"
    assert s["KillMode"] == "mixed"
    assert seconds(s["TimeoutStopSec"]) >= DEFAULT_STOP_GRACE + 10  # + observer join and pool stop
    assert seconds(s["WatchdogSec"]) >= 10
    assert s["User"] and "DynamicUser" not in s
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "read-only"),
                      ("PrivateTmp", "yes"), ("RestrictAddressFamilies", "AF_UNIX"),
                      ("MemoryDenyWriteExecute", "yes")]:
        assert s.get(key) == want, key
    assert settings(unit)["SystemCallFilter"][0] == "@system-service"
    assert "ProcSubset" not in s  # it would hide /proc/sys/fs/inotify from the limit check
    assert "/bin/kill" not in s["ExecReload"]


def test_template_differs_only_in_the_config_file_and_runtime_directory():
    a = [line for line in UNIT.read_text().splitlines() if not line.startswith("#")]
    b = [line for line in TEMPLATE.read_text().splitlines() if not line.startswith("#")]
    assert [x.replace("/etc/foldermirror/config.yaml", "/etc/foldermirror/%i.yaml")
             .replace("RuntimeDirectory=foldermirror", "RuntimeDirectory=foldermirror/%i") for x in a] == b


def exec_reload(pid: int) -> None:
    """Run the unit's ExecReload= as systemd would: $$ is a literal $, MAINPID is set; no PATH."""
    argv = [a.replace("$$", "$") for a in shlex.split(settings(UNIT)["ExecReload"][-1])]
    r = subprocess.run(argv, env={"MAINPID": str(pid), "PATH": "/nonexistent"},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr


# -- the notify protocol ------------------------------------------------------------------
class Listener:
    """A datagram socket standing in for systemd's notify socket; records (time, fields)."""

    def __init__(self, kind: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._dir: str | None = None
        if kind == "path":
            # tmp_path can be longer than sun_path's 108 bytes; a short private folder cannot.
            self._dir = tempfile.mkdtemp(prefix="fm-notify-")
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.address = path
        else:
            name = f"foldermirror-test-{os.getpid()}-{os.urandom(4).hex()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self.on_message: Callable[[list[str]], None] | None = None
        self._cond = threading.Condition()
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = data.decode().split("\n")
            if self.on_message is not None:
                self.on_message(fields)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def fields(self) -> list[str]:
        with self._cond:
            return [f for _, fields in self.messages for f in fields]

    def times(self, field: str) -> list[float]:
        with self._cond:
            return [t for t, fields in self.messages if field in fields]

    def index(self, field: str, after: int = -1) -> int:
        """Position of the first message after `after` holding `field`; -1 when none."""
        with self._cond:
            for i, (_, fields) in enumerate(self.messages):
                if i > after and (field in fields or (field.endswith("=") and any(f.startswith(field) for f in fields))):
                    return i
        return -1

    def wait(self, field: str, after: int = -1, timeout: float = 30) -> int:
        return wait_until(lambda: (i := self.index(field, after)) >= 0 and i + 1, timeout,
                          lambda: f"no {field} after message {after}; got {self.messages}") - 1

    def message(self, i: int) -> list[str]:
        with self._cond:
            return self.messages[i][1]

    def close(self) -> None:
        self._open = False
        self._thread.join(5)
        self.sock.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def listener(request) -> Iterator[Listener]:
    lst = Listener(request.param)
    yield lst
    lst.close()


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    lst = Listener("path")
    yield lst
    lst.close()


def notify_env(listener: Listener, watchdog_usec: int = 60_000_000) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(watchdog_usec)}


def proc_texts(pid: int, directory: str, name: str = "") -> Iterator[str]:
    """The text of /proc/PID/DIRECTORY/*[/NAME] (each fd, each thread…); entries gone meanwhile are skipped."""
    for entry in os.listdir(f"/proc/{pid}/{directory}"):
        try:
            yield Path(f"/proc/{pid}/{directory}/{entry}", name).read_text()
        except OSError:
            continue


def inotify_watches(pid: int) -> int:
    return sum(1 for text in proc_texts(pid, "fdinfo") for line in text.splitlines()
               if line.startswith("inotify wd:"))


def datagram_sockets(pid: int) -> int:
    """AF_UNIX datagram sockets open in `pid` (the kind sd_notify sends with)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[6] in inodes and fields[4] == "0002":  # Type column: SOCK_DGRAM
            count += 1
    return count


def test_ready_after_the_watches_then_status_then_stopping(tmp_path, daemon_factory, listener):
    src, dst, spec = pair(tmp_path, delete=True)
    dirs = 1
    for i in range(150):
        (src / f"d{i % 30}" / f"e{i}").mkdir(parents=True)
    dirs += 30 + 150
    (src / "d0" / "f").write_bytes(b"x")
    # Freeze the daemon the moment READY=1 arrives and count its inotify watches: READY
    # sent before the watches were in place would find fewer than the tree's directories.
    pid: list[int] = []
    at_ready: list[int] = []

    def freeze(fields: list[str]) -> None:
        if "READY=1" in fields and pid and not at_ready:
            os.kill(pid[0], signal.SIGSTOP)
            try:
                at_ready.append(inotify_watches(pid[0]))
            finally:
                os.kill(pid[0], signal.SIGCONT)

    listener.on_message = freeze
    d = daemon_factory(write_config(tmp_path, [spec]), env=notify_env(listener))
    pid.append(d.proc.pid)
    ready = listener.wait("READY=1")
    assert datagram_sockets(d.proc.pid) == 1
    assert at_ready and at_ready[0] >= dirs, f"{at_ready} watches at READY=1, {dirs} directories"
    assert ready == 0, listener.messages  # nothing before READY=1
    assert any(f.startswith("STATUS=") for f in listener.message(ready)), listener.message(ready)
    d.wait_ready()
    wait_mirrored(src, dst)
    (src / "new").write_bytes(b"after start")
    wait_mirrored(src, dst)
    wait_until(lambda: any(re.fullmatch(r"STATUS=watching 1 folder, 0 pending, [1-9][\d,]* files mirrored", f)
                           for f in listener.fields()), 30, lambda: f"status lines: {listener.fields()}")
    assert d.stop() == 0
    stopping = listener.wait("STOPPING=1")
    assert stopping == len(listener.messages) - 1, listener.messages
    assert "READY=1" not in listener.fields()[listener.fields().index("STOPPING=1"):]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "(gone)"


def test_no_helper_process_outlives_the_main_process(tmp_path, daemon_factory):
    # KillMode=mixed: the moment the main process exits, systemd SIGKILLs whatever is left in
    # the unit's cgroup. The fork server and the resource tracker used to exit only after the
    # main process (on EOF of their pipes), so every clean stop under systemd ended with
    # "Killing process … (python) with signal SIGKILL" (seen in tests/system/systemd_e2e.sh).
    src, dst, spec = pair(tmp_path)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    (src / "f").write_bytes(b"x")
    wait_mirrored(src, dst)
    helpers = {pid: _cmdline(pid) for pid in children(d.proc.pid)}
    assert len(helpers) == 2, helpers  # the fork server and the resource tracker (workers are below)
    d.send(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    # Checked at once, as systemd does. Reaped by the daemon, they have no /proc entry left;
    # orphans exiting on their own are still running or zombies waiting for init.
    left = {pid: cmd for pid, cmd in helpers.items() if os.path.exists(f"/proc/{pid}")}
    assert not left, left
    assert d.stop() == 0


def _wakeups(pid: int) -> int:
    """Context switches of every thread of a process so far: a thread blocked for good has none."""
    return sum(int(value) for status in proc_texts(pid, "task", "status")
               for key, value in (line.split(":", 1) for line in status.splitlines())
               if key.endswith("ctxt_switches"))


def test_an_idle_daemon_does_not_wake_up(tmp_path, daemon_factory):
    # Every thread blocks until it has something to do or a real deadline comes: polling
    # loops (the main loop at 0.2 s, the results collector, the dispatcher and the control
    # socket at 0.2-0.5 s) woke such a daemon ~40 times in 3 s.
    src, dst, spec = pair(tmp_path)
    (src / "d").mkdir()
    (src / "d" / "f").write_bytes(b"x")
    d = daemon_factory(write_config(tmp_path, [spec], control_socket=str(tmp_path / "ctl.sock")))
    d.wait_ready()
    # Settled: the status update that follows the start-up catch-up comes within
    # PROGRESS_INTERVAL, so a full interval and a bit without a context switch means it is done.
    seen = {"count": _wakeups(d.proc.pid), "since": time.monotonic(), "changes": 0}

    def settled() -> bool:
        now = _wakeups(d.proc.pid)
        if now != seen["count"]:
            seen.update(count=now, since=time.monotonic(), changes=seen["changes"] + 1)
        return time.monotonic() - seen["since"] >= PROGRESS_INTERVAL + 0.2

    wait_until(settled, 15, lambda: f"never quiet for {PROGRESS_INTERVAL + 0.2}s after the start-up: its context "
                                    f"switches went up {seen['changes']} times, to {seen['count']}")
    before = _wakeups(d.proc.pid)
    time.sleep(3)  # sleep-ok: the idle period measured
    woke = _wakeups(d.proc.pid) - before
    assert woke <= 4, f"{woke} context switches in 3 s of idleness"
    # Asleep, not stuck: a change is still mirrored at once.
    (src / "d" / "g").write_bytes(b"after the idle period")
    wait_mirrored(src, dst)
    assert d.stop() == 0


def test_reload_valid_config_watches_added_and_drops_removed(tmp_path, daemon_factory, path_listener):
    keep_src, keep_dst, keep = pair(tmp_path, "keep", delete=True)
    old_src, old_dst, old = pair(tmp_path, "old", delete=True)
    new_src, new_dst, new = pair(tmp_path, "new", delete=True)
    (new_src / "waiting").write_bytes(b"caught up when the folder is added")
    cfg = write_config(tmp_path, [keep, old])
    d = daemon_factory(cfg, env=notify_env(path_listener))
    d.wait_ready()
    ready = path_listener.wait("READY=1")

    write_config(tmp_path, [keep, new])
    exec_reload(d.proc.pid)
    reloading = path_listener.wait("RELOADING=1", after=ready)
    assert any(f.startswith("MONOTONIC_USEC=") for f in path_listener.message(reloading))
    path_listener.wait("READY=1", after=reloading)
    rec = d.wait_for("config_reloaded")[0]
    assert rec["added"] == ["new"] and rec["removed"] == ["old"] and rec["changed"] == [], rec
    wait_mirrored(new_src, new_dst)  # caught up
    (new_src / "live").write_bytes(b"watched")
    (old_src / "ignored").write_bytes(b"no longer mirrored")
    (keep_src / "still").write_bytes(b"untouched folder keeps going")
    wait_mirrored(new_src, new_dst)
    wait_mirrored(keep_src, keep_dst)
    d.wait_for("file_mirrored", folder="keep", path="still")
    assert not (old_dst / "ignored").exists()
    assert d.stop() == 0
    assert not d.events("file_mirrored", folder="old", path="ignored")


def test_reload_invalid_config_keeps_the_running_one(tmp_path, daemon_factory, path_listener):
    src, dst, spec = pair(tmp_path, delete=True)
    cfg = write_config(tmp_path, [spec])
    d = daemon_factory(cfg, env=notify_env(path_listener))
    d.wait_ready()
    good = cfg.read_text()
    cfg.write_text(good + "bogus_key: 1\n")
    check = subprocess.run([sys.executable, "-m", "foldermirror", "check", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30, env=ENV)
    assert check.returncode == 78
    exec_reload(d.proc.pid)
    reloading = path_listener.wait("RELOADING=1")
    path_listener.wait("READY=1", after=reloading)
    rec = d.wait_for("config_invalid")[0]
    assert check.stderr.strip() == f"foldermirror: error: {rec['error']}", (check.stderr, rec)
    assert "bogus_key" in rec["error"]
    (src / "after").write_bytes(b"the old config still mirrors")
    wait_mirrored(src, dst)
    assert not d.events("config_reloaded")
    assert d.stop() == 0


def test_watchdog_pings_at_half_the_interval(tmp_path, daemon_factory, path_listener):
    src, dst, spec = pair(tmp_path)
    d = daemon_factory(write_config(tmp_path, [spec]), env=notify_env(path_listener, 1_000_000))
    d.wait_ready()
    wait_until(lambda: len(path_listener.times("WATCHDOG=1")) >= 6, 30,
               lambda: f"pings: {path_listener.times('WATCHDOG=1')}")
    pings = path_listener.times("WATCHDOG=1")
    gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert gaps[0] >= 0.45, gaps  # never more often than half of WATCHDOG_USEC...
    assert gaps[len(gaps) // 2] <= 0.8, gaps  # ...and typically right at it
    assert d.stop() == 0


def test_watchdog_pid_of_another_process_means_no_pings(tmp_path, daemon_factory, path_listener):
    src, dst, spec = pair(tmp_path)
    env = {**notify_env(path_listener, 200_000), "WATCHDOG_PID": "1"}
    d = daemon_factory(write_config(tmp_path, [spec]), env=env)
    d.wait_ready()
    path_listener.wait("READY=1")
    (src / "f").write_bytes(b"x")
    wait_mirrored(src, dst)
    wait_until(lambda: any(f.startswith("STATUS=watching") for f in path_listener.fields()), 30)
    assert d.stop() == 0
    assert "WATCHDOG=1" not in path_listener.fields()


def test_pings_stop_when_the_observer_keeps_dying(tmp_path, daemon_factory, path_listener):
    src, dst, spec = pair(tmp_path, delete=True)
    env = {**notify_env(path_listener, 400_000), "FOLDERMIRROR_FAULTS": "observer_crash:crash"}
    d = daemon_factory(write_config(tmp_path, [spec]), env=env)
    d.wait_ready()
    wait_until(lambda: len(path_listener.times("WATCHDOG=1")) >= 2, 30)
    for death in range(1, 5):  # three deaths are tolerated, the fourth within 60 s is not
        (src / "crash").write_bytes(b"kills the observer thread %d" % death)
        d.wait_for("watcher_restarted", count=death)
        if death == 3:
            assert not d.events("observer_unstable")
            last = path_listener.times("WATCHDOG=1")[-1]
            wait_until(lambda last=last: path_listener.times("WATCHDOG=1")[-1] > last, 30, "pings after 3 deaths")
    rec = d.wait_for("observer_unstable")[0]
    assert rec["deaths"] == 4 and "systemd restarts" in rec["action"], rec
    stopped_at = time.monotonic()

    def late() -> list[float]:  # (a datagram sent just before the log line may be read a moment after it)
        return [round(t - stopped_at, 3) for t in path_listener.times("WATCHDOG=1") if t > stopped_at + 0.15]

    # Ten ping periods (0.2 s each) without one WATCHDOG=1; the first one ends the watch.
    never_within(late, 2.0, lambda: f"pings {late()} s after the observer became unstable")
    wait_until(lambda: any(f.startswith("STATUS=") and "unhealthy" in f for f in path_listener.fields()), 10,
               lambda: f"no STATUS= saying unhealthy: {[f for f in path_listener.fields() if f.startswith('STATUS=')]}")
    # Still self-healing meanwhile: the rebuilt observer keeps mirroring.
    (src / "after").write_bytes(b"still mirrored")
    wait_mirrored(src, dst)
    assert d.stop() == 0


@pytest.mark.parametrize("notify_socket", [None, "/nonexistent/notify"])
def test_without_a_notify_socket_nothing_fails(tmp_path, daemon_factory, notify_socket):
    src, dst, spec = pair(tmp_path, delete=True)
    env = {"WATCHDOG_USEC": "200000", **({"NOTIFY_SOCKET": notify_socket} if notify_socket else {})}
    d = daemon_factory(write_config(tmp_path, [spec]), env=env)
    d.wait_ready()
    if notify_socket is None:
        assert datagram_sockets(d.proc.pid) == 0  # nothing to send with
    (src / "f").write_bytes(b"mirrored all the same")
    wait_mirrored(src, dst)
    d.send(signal.SIGHUP)
    d.wait_for("config_reloaded")
    assert d.stop() == 0
    assert not [r for r in d.records if r.get("level") == "error"], d.tail()
    assert not [line for line in d.other_lines if line.strip()], d.other_lines


# -- the unit's sandbox, reproduced -------------------------------------------------------
def syscall_groups() -> dict[str, list[str]]:
    out = analyze("syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip():
            current = None
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def seccomp_spec(unit: Path) -> dict[str, Any]:
    """What systemd makes of the unit's syscall, address-family and W^X settings."""
    s = settings(unit)
    groups = syscall_groups()
    allow: set[str] | None = None
    for value in s["SystemCallFilter"]:
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        if allow is None:
            assert not deny, "the first SystemCallFilter= of the unit is expected to be an allow-list"
            allow = expand(["@default"], groups)  # systemd adds @default to any allow-list
        allow = allow - expand(names, groups) if deny else allow | expand(names, groups)
    return {
        "allow": sorted(allow or ()),
        "errno": getattr(errno, s.get("SystemCallErrorNumber", ["EPERM"])[-1]),
        "families": [int(getattr(socket, f)) for f in s["RestrictAddressFamilies"][-1].split()],
        "mdwe": s.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes",
    }


@needs_analyze
@pytest.mark.skipif(not ctypes.util.find_library("seccomp"), reason="libseccomp is not installed")
def test_daemon_works_under_the_units_seccomp_filters_without_privileges(tmp_path, daemon_factory, path_listener):
    spec_file = tmp_path / "seccomp.json"
    spec = seccomp_spec(UNIT)
    assert {"copy_file_range", "sendfile", "inotify_add_watch", "rename", "renameat2"} <= set(spec["allow"])
    spec_file.write_text(json.dumps(spec))
    src, dst, folder = pair(tmp_path, delete=True)
    (src / "big").write_bytes(os.urandom(3 << 20))
    (src / "sub").mkdir()
    (src / "sub" / "private").write_bytes(b"mode kept")
    (src / "sub" / "private").chmod(0o640)
    (src / "link").symlink_to("big")
    (src / "empty").touch()
    src2, dst2, folder2 = pair(tmp_path, "second")
    (src2 / "file").write_bytes(b"added by a reload")
    prefix = [sys.executable, str(CONFINE), "--no-caps", "--seccomp", str(spec_file), "--"]
    d = daemon_factory(write_config(tmp_path, [folder]), env=notify_env(path_listener), prefix=prefix)
    d.wait_ready()
    assert Path(f"/proc/{d.proc.pid}/status").read_text().count("CapEff:\t0000000000000000") == 1
    path_listener.wait("READY=1")
    wait_mirrored(src, dst)
    (src / "live").write_bytes(os.urandom(100_000))
    (src / "big").rename(src / "moved")
    wait_mirrored(src, dst)
    write_config(tmp_path, [folder, folder2])
    exec_reload(d.proc.pid)
    d.wait_for("config_reloaded")
    wait_mirrored(src2, dst2)
    assert d.stop() == 0
    assert "STOPPING=1" in path_listener.fields()
    errors = [r for r in d.records if r.get("level") in ("error", "warning")]
    assert not errors, errors
    assert not [line for line in d.other_lines if line.strip()], d.other_lines


def confined_by(tmp_path: Path, *texts: str) -> list[str]:
    """The prefix that runs a command under the filters of these unit texts, one after the
    other as systemd reads a unit and then its drop-ins, as uid 0 without capabilities."""
    unit = tmp_path / "sandbox.service"
    unit.write_text("\n".join(texts))
    spec_file = tmp_path / "seccomp.json"
    spec_file.write_text(json.dumps(seccomp_spec(unit)))
    return [sys.executable, str(CONFINE), "--no-caps", "--seccomp", str(spec_file), "--"]


@needs_analyze
@pytest.mark.skipif(not ctypes.util.find_library("seccomp"), reason="libseccomp is not installed")
@pytest.mark.timeout(180)
def test_a_remote_target_is_mirrored_under_the_units_filters_with_the_drop_in(tmp_path, sshd, daemon_factory):
    both = tmp_path / "both.service"
    both.write_text(UNIT.read_text() + "\n" + DROP_IN.read_text())
    spec = seccomp_spec(both)
    assert "capset" in spec["allow"] and spec["families"] == [socket.AF_UNIX, socket.AF_INET, socket.AF_INET6]
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "big").write_bytes(os.urandom(1 << 20))
    (src / "sub").mkdir()
    (src / "sub" / "f").write_bytes(b"there at the start")
    config = write_config(tmp_path, [folder], ssh=ssh_config_block(sshd))
    d = daemon_factory(config, prefix=confined_by(tmp_path, UNIT.read_text(), DROP_IN.read_text()))
    d.wait_for("remote_up", 60)
    d.wait_ready(60)
    wait_mirrored(src, dst, 60)
    (src / "live").write_bytes(b"mirrored live")
    (src / "big").rename(src / "moved")
    (src / "sub" / "f").unlink()
    wait_mirrored(src, dst, 60)
    folder_status = wait_until(lambda: (lambda f: f if f["state"] == "in_sync" else None)(
        daemon_status(config)["folders"][0]), 30, lambda: str(daemon_status(config)["folders"][0]))
    assert folder_status["link"]["state"] == "up", folder_status
    assert d.stop() == 0
    assert tree_diff(src, dst) == [] and remote_temps(dst) == []
    errors = [r for r in d.records if r.get("level") in ("error", "warning")]
    assert not errors, errors
    assert not [line for line in d.other_lines if line.strip()], d.other_lines


@needs_analyze
@pytest.mark.skipif(not ctypes.util.find_library("seccomp"), reason="libseccomp is not installed")
@pytest.mark.timeout(120)
def test_without_the_drop_in_the_link_fails_and_the_fix_names_it(tmp_path, sshd, daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd)
    (src / "f").write_bytes(b"waits")
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "retry_min": "250ms",
                                                   "retry_max": "1s"})
    d = daemon_factory(config, prefix=confined_by(tmp_path, UNIT.read_text()))
    line = d.wait_for("remote_down", 60)[0]
    if shutil.which("setpriv"):  # ~@privileged denies the capset(2) setpriv always makes
        assert line["error"] == "setpriv: activate capabilities: Operation not permitted", line
    else:  # RestrictAddressFamilies=AF_UNIX denies ssh's socket()
        assert line["error"].endswith(": failure"), line
    assert "systemd/remote-targets.conf" in line["fix"], line
    d.wait_for("remote_retry", 30)
    assert daemon_status(config)["folders"][0]["state"] == "remote_down"
    assert d.stop() == 0
    assert not dst.exists()


# -- start-up checks ------------------------------------------------------------------------
def confined() -> list[str]:
    """Run as uid 0 without capabilities: file permissions bind it like the service's user."""
    return [sys.executable, str(CONFINE), "--no-caps", "--"]


def test_unusable_folders_are_named_and_the_others_served(tmp_path, daemon_factory):
    good_src, good_dst, good = pair(tmp_path, "good", delete=True)
    ro_src, ro_dst, readonly = pair(tmp_path, "readonly")
    closed_src, closed_dst, closed = pair(tmp_path, "closed")
    for s in (good_src, ro_src, closed_src):
        (s / "f").write_bytes(b"data")
    ro_dst.mkdir()
    ro_dst.chmod(0o555)
    closed_src.chmod(0o311)  # may be entered, not listed
    try:
        d = daemon_factory(write_config(tmp_path, [good, readonly, closed]), prefix=confined())
        d.wait_for("daemon_ready")
        problems = {r["folder"]: r for r in d.wait_for("folder_unusable", count=2)}
        assert f"target {ro_dst} is not writable" in problems["readonly"]["error"], problems
        assert "Permission denied (EACCES)" in problems["readonly"]["error"], problems
        assert f"source {closed_src} is not readable" in problems["closed"]["error"], problems
        assert "reload" in problems["closed"]["fix"]
        wait_mirrored(good_src, good_dst)
        # Fixed, then reloaded: the folder is served without a restart.
        ro_dst.chmod(0o755)
        d.send(signal.SIGHUP)
        rec = d.wait_for("config_reloaded")[0]
        assert rec["added"] == ["readonly", "closed"] and rec["unusable"] == ["closed"], rec
        wait_mirrored(ro_src, ro_dst, delete=False)
        assert d.stop() == 0
    finally:
        closed_src.chmod(0o755)
        ro_dst.chmod(0o755)


def test_no_usable_folder_exits_1_naming_each(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    dst.mkdir()
    dst.chmod(0o500)
    try:
        d = daemon_factory(write_config(tmp_path, [spec]), prefix=confined())
        assert d.proc.wait(30) == 1
        d.stop()
        assert f"target {dst} is not writable" in d.events("folder_unusable")[0]["error"]
        assert any("no folder can be served" in line for line in d.other_lines), d.other_lines
    finally:
        dst.chmod(0o755)


def test_too_few_inotify_watches_warns_and_keeps_running(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(11):
        (src / f"d{i}").mkdir()
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    # The daemon is told the limit is 5; the real sysctl is never touched.
    d = daemon_factory(cfg, env={"FOLDERMIRROR_FAULTS": "max_user_watches:5"})
    rec = d.wait_for("inotify_limit_low")[0]
    assert rec["sysctl"] == "fs.inotify.max_user_watches" and rec["limit"] == 5 and rec["needed"] == 12, rec
    assert "fs.inotify.max_user_watches = 1000" in rec["fix"] and "sysctl.d" in rec["fix"], rec
    assert rec["rescan_interval_s"] == 3600, rec  # rescans were off: the unwatched part needs them
    d.wait_ready()
    (src / "d3" / "f").write_bytes(b"still mirrored")
    wait_mirrored(src, dst)
    assert d.stop() == 0


def test_paths_hidden_by_private_tmp_are_named_under_systemd(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    assert str(tmp_path).startswith("/tmp/")
    d = daemon_factory(write_config(tmp_path, [spec]), env={"INVOCATION_ID": "0" * 32})
    d.wait_ready()
    found = {r["key"]: r["path"] for r in d.events("private_tmp_path")}
    assert found == {"--config": str(tmp_path / "config.yaml"), "folders[0].source": str(src),
                     "folders[0].target": str(dst)}, found
    assert "PrivateTmp" in d.events("private_tmp_path")[0]["error"]
    assert d.stop() == 0


def test_no_private_tmp_warning_outside_systemd(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    d = daemon_factory(write_config(tmp_path, [spec]))
    d.wait_ready()
    assert d.stop() == 0
    assert not d.events("private_tmp_path")


