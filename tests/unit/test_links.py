"""Links (remote/links.py), the ssh masters' supervisor, on a fake clock with fake masters: it
connects, says remote_up once, holds a folder's paths while its host is down, backs off with
jitter to a bound, bounds what it holds, and compares the folder when the host is back.
Proving the remote side and the round trip are the real server's business (tests/daemon).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

from fakes import Calls, Clock, FakeLog, state
from foldermirror.config import parse_config
from foldermirror.folderstate import FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.remote import links as links_module
from foldermirror.remote.links import Links, LinkState, LinkStatus


class FakeMaster:
    """A Popen-shaped ssh master: up once its socket exists, dead once told."""

    def __init__(self, argv: list[str], errors: IO[bytes]) -> None:
        self.argv = argv
        self.errors = errors
        self.returncode: int | None = None
        self.socket = argv[argv.index("-S") + 1]
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def _exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    def terminate(self) -> None:
        self._exit(-15)

    def kill(self) -> None:
        self._exit(-9)

    def come_up(self) -> None:
        Path(self.socket).touch()

    def die(self, error: str) -> None:
        self.errors.write(error.encode())
        self.errors.flush()
        self._exit(255)


class Rig:
    def __init__(self, tmp_path: Path, folders: int = 1) -> None:
        (tmp_path / "kh").write_text("")
        for i in range(folders):
            (tmp_path / f"s{i}").mkdir()
        text = ("ssh: {known_hosts: kh, retry_min: 1s, retry_max: 8s}\nfolders:\n"
                + "".join(f"  - {{name: f{i}, source: s{i}, target: 'ssh://backup/m/{i}'}}\n" for i in range(folders)))
        self.config = parse_config(text, str(tmp_path / "c.yaml"))
        self.clock = Clock()
        self.log = FakeLog()
        self.changes = ChangeQueue(clock=self.clock)
        self.folders: dict[str, FolderState] = {f.name: state(f) for f in self.config.folders}
        self.catch_ups = Calls()
        self.dropped = Calls()
        self.masters: list[FakeMaster] = []
        self.links = ProvedLinks(log=self.log, folders=self.folders, changes=self.changes,
                               request_catch_up=self.catch_ups, drop_folder=self.dropped, wake=Calls(),
                               clock=self.clock, spawn=self.spawn)
        self.links.configure(self.config.ssh)

    def spawn(self, argv: list[str], errors: IO[bytes]) -> Any:
        master = FakeMaster(argv, errors)
        self.masters.append(master)
        return master

    @property
    def status(self) -> LinkStatus:
        (status,) = self.links.links.values()
        return status


class ProvedLinks(Links):
    problem: str | None = None

    def _rtt(self, status: LinkStatus) -> float | None:
        return 1.5

    def _prove(self, status: LinkStatus, f: Any) -> str | None:
        return self.problem


def test_a_link_is_up_once_its_master_is_in_and_its_folders_are_compared(tmp_path: Path):
    rig = Rig(tmp_path)
    assert rig.status.state is LinkState.CONNECTING and rig.changes.held("f0")
    assert rig.links.deadline() is not None  # looking for the socket meanwhile
    rig.masters[0].come_up()
    rig.links.tick(rig.clock.now)
    assert rig.status.state is LinkState.UP and not rig.changes.held("f0")
    (line,) = rig.log.of("remote_up")
    assert line["rtt_ms"] == 1.5 and line["reconnect"] is False
    assert rig.catch_ups.calls == [("f0", "startup")]
    assert rig.links.deadline() is None  # up: nothing to look at until the master's exit wakes the loop
    rig.links.stop()


def test_a_lost_link_holds_its_folder_backs_off_with_jitter_and_says_it_once(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.masters[0].come_up()
    rig.links.tick(rig.clock.now)
    waits = []
    for attempt in range(6):
        rig.masters[-1].die("ssh: connect to host backup port 22: Connection refused")
        rig.links.tick(rig.clock.now)
        assert rig.changes.held("f0") and rig.status.state is LinkState.DOWN
        waits.append(rig.status.retry_at - rig.clock.now)
        rig.clock.now = rig.status.retry_at
        rig.links.tick(rig.clock.now)  # reconnects: a new master
        assert rig.status.state is LinkState.CONNECTING and len(rig.masters) == attempt + 2
    for wait, base in zip(waits, (1, 2, 4, 8, 8, 8), strict=True):
        assert 0.8 * base <= wait <= 1.2 * base, waits
    (down,) = rig.log.of("remote_down", "error")
    assert "Connection refused" in down["error"] and "nothing listens" in down["fix"] and down["folders"] == ["f0"]
    assert len(rig.log.of("remote_retry", "warning")) == 5
    rig.masters[-1].come_up()
    rig.links.tick(rig.clock.now)
    assert rig.log.of("remote_up")[-1]["reconnect"] is True and rig.status.reconnects == 1
    assert rig.catch_ups.calls[-1] == ("f0", "remote_up") and not rig.changes.held("f0")
    rig.links.stop()


def test_paths_changed_while_down_wait_coalesced_and_flow_once_it_is_back(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.masters[0].die("Connection timed out")
    rig.links.tick(rig.clock.now)
    for _ in range(3):
        rig.changes.touch("f0", "a", settle=0.25, ready=True)
    assert rig.changes.take(10, timeout=0) == [] and rig.changes.counts("f0") == (1, 0)
    rig.clock.now = rig.status.retry_at
    rig.links.tick(rig.clock.now)
    rig.masters[-1].come_up()
    rig.links.tick(rig.clock.now)
    assert [i.path for i in rig.changes.take(10, timeout=0)] == ["a"]
    rig.links.stop()


def test_what_waits_is_bounded_across_folders(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(links_module, "HELD_MAX", 10)
    rig = Rig(tmp_path, folders=2)
    rig.masters[0].die("Connection timed out")
    rig.links.tick(rig.clock.now)
    for i in range(8):
        rig.changes.touch("f0", f"a{i}", settle=0.25)
    for i in range(4):
        rig.changes.touch("f1", f"b{i}", settle=0.25)
    rig.links.tick(rig.clock.now)
    (line,) = rig.log.of("remote_backlog_dropped", "warning")
    assert (line["folder"], line["paths"]) == ("f0", 8)  # the largest goes, the other is kept
    assert rig.changes.counts("f0") == (0, 0) and rig.changes.counts("f1") == (4, 0)
    rig.changes.touch("f0", "later", settle=0.25)
    rig.links.tick(rig.clock.now)
    assert rig.changes.counts("f0") == (0, 0)  # it is compared on reconnect: nothing piles up again
    rig.links.stop()


def test_a_remote_side_that_cannot_serve_drops_the_folder(tmp_path: Path):
    rig = Rig(tmp_path)
    rig.links.problem = "target ssh://backup/m/0: rsync is not installed on backup"
    rig.masters[0].come_up()
    rig.links.tick(rig.clock.now)
    assert rig.dropped.calls and rig.dropped.calls[0][:2] == ("f0", rig.links.problem)
    assert rig.catch_ups.calls == []
    rig.links.stop()


def test_sockets_live_in_a_private_directory_removed_at_stop(tmp_path: Path):
    rig = Rig(tmp_path)
    socket = rig.masters[0].socket
    directory = os.path.dirname(socket)
    assert os.stat(directory).st_mode & 0o777 == 0o700 and len(socket) < 100
    rig.links.stop()
    assert not os.path.exists(directory) and rig.masters[0].returncode is not None
