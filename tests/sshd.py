"""A real OpenSSH server on 127.0.0.1 for the remote-target tests (mirroring over ssh with rsync).

SshServer runs /usr/sbin/sshd as a plain child process of the tests (never through systemd,
never the system's sshd or its host keys) in a temp dir of its own: its own ed25519 host key,
config, free port, authorized_keys, a client key and a known_hosts file that names the host
key for `[127.0.0.1]:PORT` (no trust on first use). The remote user is whoever runs the tests
(root in CI), logged in with their real shell, so their shell rc files run for every remote
command (root's ~/.bashrc, as Debian's bash reads it when started by sshd), unless
`user_rc=False`: then sshd gives the sessions a HOME of their own (an empty folder in the
server's dir), so the shell finds no rc file of the user's, as for a dedicated remote user
whose shell is /bin/sh, without creating one or touching the user's files (the benchmark's
choice: a pyenv ~/.bashrc adds about 200 ms to every remote command).

It can stop and come back on the same port and host key (a server that was down for a
while), and freeze the processes behind established connections (a hung peer: the kernel
still acknowledges TCP, nothing answers at the ssh level).

No pytest here: tests/conftest.py has the `sshd` fixture; this module is usable from any
script. Errors are SshServerError with the server's log in the message.
"""

from __future__ import annotations

import functools
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

SSHD = Path("/usr/sbin/sshd")  # absolute: sshd re-executes itself per connection and refuses a relative path
HOST = "127.0.0.1"
# Variables that would make sshd talk to whatever service manager runs the tests (Debian's
# sshd sends READY=1 to NOTIFY_SOCKET) or take over sockets meant for someone else.
_FOREIGN_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
_BIND_RETRIES = 5


class SshServerError(RuntimeError):
    """sshd did not start, stop or pause as asked; the message ends with its log."""


def missing_tools() -> list[str]:
    """What SshServer needs and this machine lacks (the fixture skips naming them)."""
    out = [] if os.access(SSHD, os.X_OK) else [str(SSHD)]
    return out + [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]


def _free_port() -> int:
    """A port nothing listens on right now; sshd may still lose it to someone else (start retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair without passphrase at `path`; returns "ssh-ed25519 AAAA..."."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[19])


def _alive(pid: int, start: int) -> bool:
    """`pid` is still the process first seen with start time `start`, and not a zombie."""
    st = _proc_stat(pid)
    return st is not None and st[2] == start and st[0] not in ("Z", "X")


def _children(pid: int) -> dict[int, int]:
    """The live (not zombie) children of `pid`, each with its start time (a pid may be reused)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None and st[1] == pid and st[0] not in ("Z", "X"):
                out[int(entry)] = st[2]
    return out


def _descendants(pid: int) -> dict[int, int]:
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        out.update(kids)
        todo += kids
    return out


def _wait(predicate: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)  # sleep-ok: poll interval of a deadline-bounded wait
    return True


@functools.cache
def _penalties_setting() -> list[str]:
    """`PerSourcePenalties no` where this sshd knows it (OpenSSH >= 9.8), else nothing.

    From 9.8 sshd refuses, for a while, connections from an address whose sessions crashed or
    never authenticated, which is what tests that kill, freeze and refuse do from 127.0.0.1.
    9.2 (Debian 12) rejects the keyword, so ask this binary rather than assume.
    """
    r = subprocess.run([str(SSHD), "-t", "-f", os.devnull, "-o", "PerSourcePenalties=no"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return [] if "PerSourcePenalties" in r.stderr else ["PerSourcePenalties no"]


class SshServer:
    """sshd on 127.0.0.1 in a temp dir of its own, for the user running the tests.

    `with SshServer() as server:` starts it and cleans up everything at the end (close()).
    `extra_config`: more sshd_config lines (they come after the fixed ones, and sshd keeps the
    first value it reads of most keywords, so they add rather than override). `log_level`:
    INFO or more, as readiness is read from the log and logins() counts its lines.
    `user_rc`: False sets the sessions' HOME to `self.home`, an empty folder (sshd's
    `SetEnv`, which overrides the HOME sshd sets from the password entry; the session still
    starts in the real home directory), so bash reads no ~/.bashrc of the user's.
    """

    def __init__(self, *, extra_config: Sequence[str] = (), log_level: str = "VERBOSE", user_rc: bool = True) -> None:
        if log_level.upper() not in ("INFO", "VERBOSE", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3"):
            raise ValueError(f"log_level {log_level!r}: INFO or more is needed (readiness is read from the log)")
        self.dir = Path(tempfile.mkdtemp(prefix="fm-sshd-"))  # short: control sockets go here (108-byte limit)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.host = HOST
        self.port: int | None = None
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.home = None if user_rc else self.dir / "home"
        self.proc: subprocess.Popen[bytes] | None = None
        self._extra_config = list(extra_config)
        self._log_level = log_level
        self._log_offset = 0  # where the current start's lines begin in the log
        self._paused: dict[int, int] = {}   # pid -> start time, stopped by pause_sessions
        self._orphans: dict[int, int] = {}  # sessions left running by stop(sessions=False)
        try:
            self.host_public = _keygen(self.host_key, "foldermirror-test-host")
            self.client_public = _keygen(self.client_key, "foldermirror-test-client")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.authorized_keys.write_text(self.client_public + "\n")
        self.log_path.touch()
        if self.home is not None:
            self.home.mkdir()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> SshServer:
        """Start sshd and wait until it listens; on the port it had before, if it had one.

        The first start takes a free port and, should another process bind it first, another
        (sshd exits on "Address already in use"). Ready means sshd logged "Server listening on",
        which it does after listen(): no probe connection, so no stray session process.
        """
        if self.running():
            return self
        keep_port = self.port is not None
        for _ in range(_BIND_RETRIES):
            if not keep_port:
                self.port = _free_port()
            self._write_config()
            if self._launch(timeout):
                return self
            if keep_port or "Address already in use" not in self._log_since_start():
                break
        raise SshServerError(f"sshd did not start on {self.host}:{self.port}:\n{self.log()}")

    def _write_config(self) -> None:
        assert self.port is not None
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            "PidFile none",
            "UsePAM no",
            "StrictModes no",  # the keys live in a temp dir, not in ~/.ssh with its modes
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "MaxSessions 100",          # multiplexed sessions over one connection (ControlMaster)
            "MaxStartups 100:30:200",   # connections at once not yet logged in (many workers)
            f"LogLevel {self._log_level}",
            *_penalties_setting(),
            *([f"SetEnv HOME={self.home}"] if self.home is not None else []),
            *self._extra_config,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        # The host key for this port only: ssh looks up "[host]:port" for ports other than 22.
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_public}\n")

    def _launch(self, timeout: float) -> bool:
        """Run sshd and wait for its listening line; False (and reaped) if it exits first."""
        if os.geteuid() == 0:
            # Its privilege separation directory, made at boot by the package's tmpfiles.d or
            # unit, which nothing ran here. Left in place: it is the system's, not ours.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
        with open(self.log_path, "ab") as log:
            # -D: stay in the foreground (our child); -e: log to stderr, which is the log file,
            # so config errors printed before logging starts land there too.
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=env, cwd=self.dir)
        line = f"Server listening on {self.host} port {self.port}."
        proc = self.proc
        if not _wait(lambda: line in self._log_since_start() or proc.poll() is not None, timeout):
            self._kill_listener()
            raise SshServerError(f"sshd did not listen within {timeout}s:\n{self.log()}")
        if proc.poll() is not None:
            self.proc = None
            return False
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, sessions: bool = True, timeout: float = 10) -> None:
        """Stop sshd: SIGTERM, then SIGKILL if it is still there after `timeout`.

        sessions=True ends the established connections too (before the listener, which reaps
        them), those an earlier stop(sessions=False) left running included: their clients see
        the connection closed, as when a server goes down. sessions=False leaves them running,
        as restarting an OpenSSH service does.
        """
        if sessions:
            self._end({**self._listener_descendants(), **self._orphans, **self._paused}, timeout)
            self._orphans.clear()
        else:
            self._orphans.update(self._listener_descendants())
        self._kill_listener(timeout)

    def restart(self, *, sessions: bool = True, timeout: float = 10) -> None:
        """stop() then start(): the same port, host key and known_hosts, so clients trust it again."""
        self.stop(sessions=sessions, timeout=timeout)
        self.start(timeout)

    def close(self) -> None:
        """End everything this server started (sshd, sessions, frozen ones too) and remove its dir."""
        try:
            self.stop(sessions=True)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SshServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _kill_listener(self, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _end(self, pids: dict[int, int], timeout: float) -> None:
        """SIGTERM (and SIGCONT, should they be frozen) then SIGKILL what is left at the deadline."""
        for sig in (signal.SIGTERM, signal.SIGCONT):
            self._signal(pids, sig)
        if not _wait(lambda: not any(_alive(p, s) for p, s in pids.items()), timeout):
            self._signal(pids, signal.SIGKILL)
            _wait(lambda: not any(_alive(p, s) for p, s in pids.items()), timeout)
        for p in pids:
            self._paused.pop(p, None)

    @staticmethod
    def _signal(pids: dict[int, int], sig: int) -> None:
        for pid, start in pids.items():
            if _alive(pid, start):  # never a reused pid
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    # -- sessions ---------------------------------------------------------------------------

    def _listener_descendants(self) -> dict[int, int]:
        return _descendants(self.proc.pid) if self.running() and self.proc is not None else {}

    def session_pids(self) -> list[int]:
        """One sshd process per connection: the listener's live children.

        A connection still logging in shows up too. (Logged in as root there is no separate
        privilege-separated child; as another user that child is below this one.)
        """
        return sorted(_children(self.proc.pid)) if self.running() and self.proc is not None else []

    def pause_sessions(self, timeout: float = 5) -> list[int]:
        """SIGSTOP every process behind the established connections: a peer that hangs.

        The sshd session processes and what they run (remote shells, rsync), so nothing on
        the server side answers, keepalives included; the kernel still acknowledges TCP. The
        listener keeps accepting (new connections are not frozen). Returns once all of them
        are stopped; returns their pids.
        """
        found: dict[int, int] = {}
        while True:  # until a pass finds no process forked before its parent was stopped
            new = {p: s for p, s in self._listener_descendants().items() if p not in found}
            if not new:
                break
            self._signal(new, signal.SIGSTOP)
            found.update(new)
        self._paused.update(found)

        def all_stopped() -> bool:
            return all(st is None or st[2] != found[p] or st[0] in ("T", "t", "Z", "X")
                       for p in found for st in [_proc_stat(p)])

        if not _wait(all_stopped, timeout):
            raise SshServerError(f"session processes {sorted(found)} not all stopped within {timeout}s")
        return sorted(found)

    def resume_sessions(self) -> None:
        """SIGCONT whatever pause_sessions stopped."""
        self._signal(self._paused, signal.SIGCONT)
        self._paused.clear()

    # -- clients ----------------------------------------------------------------------------

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def ssh_options(self, *extra: str) -> list[str]:
        """`ssh` and its options for this server, without the destination.

        `extra` come before the fixed options: ssh keeps the first value it is given of an
        option, so they override (e.g. another UserKnownHostsFile). -F /dev/null: neither
        ~/.ssh/config nor /etc/ssh/ssh_config (GSSAPI, SendEnv) changes what tests see.
        """
        assert self.port is not None, "not started"
        return ["ssh", *extra, "-F", os.devnull, "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-p", str(self.port)]

    def ssh_argv(self, *extra: str) -> list[str]:
        """The ssh command line for this server up to the destination; append the remote command."""
        return [*self.ssh_options(*extra), self.destination]

    def rsh(self, *extra: str) -> str:
        """ssh_options as one string, for `rsync -e` (destination `{destination}:/path`)."""
        return shlex.join(self.ssh_options(*extra))

    def run(self, cmd: str, *extra: str, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` on the server (through the user's shell) over a new connection; never raises on failure."""
        return subprocess.run([*self.ssh_argv(*extra), cmd], capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def url(self, path: str | os.PathLike[str]) -> str:
        """ssh://user@127.0.0.1:PORT/abs/path, the path as is (not percent-encoded)."""
        p = os.fspath(path)
        if not p.startswith("/"):
            raise ValueError(f"not an absolute path: {p!r}")
        return f"ssh://{self.destination}:{self.port}{p}"

    def socket_path(self, name: str = "ctl") -> Path:
        """A path in the server's dir for a ControlPath socket, short enough for AF_UNIX."""
        return self.dir / name

    # -- log --------------------------------------------------------------------------------

    def log(self) -> str:
        """Everything sshd logged, all starts included."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_since_start(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def logins(self) -> int:
        """How many logins the server accepted so far (a command over a ControlMaster is none)."""
        return self.log().count(f"Accepted publickey for {self.user} ")


def ssh_config_block(server: SshServer) -> dict[str, str]:
    """What a foldermirror config's top-level `ssh:` block holds for this server."""
    return {"identity_file": str(server.client_key), "known_hosts": str(server.known_hosts)}
