"""The main process's side of remote targets: one supervised ssh master per link.

Each master is a child process of the service (never a daemonised ssh of its own); a thread
per master waits for its exit and wakes the main loop, whose tick() acts. While a link is
not up, the folders on it are `remote_down`: their paths wait in the ChangeQueue (held,
coalesced by path) and reconnections back off, doubling with jitter up to retry_max. Once
it is up again each of its folders is compared with its target first (feeding the same
queue, under the mass-delete guard), and the held paths flow.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any

from foldermirror.config import FolderConfig, SshConfig, SshOptions
from foldermirror.folderstate import FolderState
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.records import RemoteSpec
from foldermirror.remote import probe, rsync
from foldermirror.remote.ssh import SshParams, cpu_has_aes, direct_argv, master_argv, session_argv, wants_aes_first
from foldermirror.remote.url import Link
from foldermirror.tempnames import temp_name

# Past this many paths waiting, across the folders whose link is down, the largest backlog
# is dropped and its folder compared as a whole on reconnect instead. A held path costs
# about 400 bytes (the queue entry and its path; measured with tracemalloc for 100,000
# paths of 24 characters), so the bound is about 40 MiB.
HELD_MAX = 100_000
RTT_TIMEOUT = 10.0
SUSPECT_EVERY = 60.0


@dataclass(frozen=True)
class LinkView:
    """A remote target's connection, as the links' supervisor knows it."""

    host: str                   # [user@]host[:port]
    state: str                  # connecting | up | down
    since_s: float              # in this state for so long
    last_error: str | None
    rtt_ms: float | None        # a session's round trip through the master, when it came up
    reconnects: int
    retry_in_s: float | None    # down: the next attempt



class LinkState(StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


@dataclass
class _Master:
    socket: str
    proc: subprocess.Popen[bytes] | None = None
    errors: IO[bytes] | None = None


@dataclass
class LinkStatus:
    """What `status` and the metrics show of a link; also the supervisor's own state."""

    params: SshParams
    connections: int
    state: LinkState = LinkState.CONNECTING
    since: float = 0.0           # when it last went up, or down
    attempt_at: float = 0.0      # when the current connection attempt began
    failures: int = 0            # consecutive failed connections
    retry_at: float = 0.0
    last_error: str | None = None
    rtt_ms: float | None = None
    remote_root: bool = False    # the remote user is root: owners and groups can be kept
    rsync_version: tuple[int, int, int] | None = None
    rsync_lacks: tuple[str, ...] = ()  # preserve: names the remote rsync was built without
    reconnects: int = 0
    was_up: bool = False
    masters: list[_Master] = field(default_factory=list)


class Links:
    def __init__(self, *, log: Any, folders: Mapping[str, FolderState], changes: ChangeQueue,
                 request_catch_up: Callable[[str, str], None], drop_folder: Callable[[str, str, str], None],
                 wake: Callable[[], None], once: bool = False, clock: Callable[[], float] = time.monotonic,
                 spawn: Callable[[list[str], IO[bytes]], subprocess.Popen[bytes]] | None = None) -> None:
        self.log = log
        self.folders = folders
        self.changes = changes
        self.request_catch_up = request_catch_up
        self.drop_folder = drop_folder  # (name, problem, fix): a folder whose remote side cannot serve
        self.wake = wake
        self.once = once  # `sync`: a host that cannot be reached fails its folders, no retries
        self.clock = clock
        self.ssh = SshConfig()
        self._spawn = spawn or _spawn
        self.links: dict[Link, LinkStatus] = {}
        self._dir: str | None = None
        self._compare_on_up: set[str] = set()
        self._said: dict[str, float] = {}
        self._refused: dict[str, tuple[str, ...]] = {}  # per folder: preserve: names its remote cannot keep
        self._unkept_said: dict[str, tuple[str, ...]] = {}  # what was said of each, so it is said once
        self._seq = itertools.count()

    # -- configuration ------------------------------------------------------------------
    def configure(self, ssh: SshConfig) -> None:
        """After admission (start-up, reload): the links the served remote folders need.
        New ones connect, changed ones reconnect, unused ones close; folders on a link that
        is not up are held."""
        self.ssh = ssh
        wanted: dict[Link, tuple[SshParams, int]] = {}
        for name, state in self.folders.items():
            remote = state.config.remote
            self.changes.serial(name, remote is not None)
            if remote is not None:
                options = ssh.for_host(remote.link.host)
                wanted[remote.link] = (params_for(options, remote.link), options.connections)
        self.want(wanted)
        for link, status in self.links.items():
            if status.state is not LinkState.UP:
                for name in self._folders_on(link):
                    self.changes.hold(name)

    def want(self, wanted: Mapping[Link, tuple[SshParams, int]]) -> None:
        for link in [k for k in self.links if k not in wanted or wanted[k] != self._key(self.links[k])]:
            self._close(self.links.pop(link))
        now = self.clock()
        for link, (params, connections) in wanted.items():
            if link not in self.links:
                status = LinkStatus(params, connections, since=now)
                self.links[link] = status
                self._connect(link, status)

    @staticmethod
    def _key(status: LinkStatus) -> tuple[SshParams, int]:
        return (status.params, status.connections)

    def spec(self, f: FolderConfig) -> RemoteSpec | None:
        """How workers reach the folder's target now (None: a local target)."""
        if f.remote is None:
            return None
        status = self.links.get(f.remote.link)
        sockets = tuple(m.socket for m in status.masters) if status else ()
        if status is None:
            return remote_spec(f, self.ssh, ("/nonexistent",))
        merged = status.rsync_version is not None and rsync.merges_delete_pass(status.rsync_version)
        unkept = set(status.rsync_lacks) | set(self._refused.get(f.name, ()))
        keep = tuple(n for n in f.preserve if n in rsync.KEEP_FLAGS and n not in unkept)
        return remote_spec(f, self.ssh, sockets or ("/nonexistent",), status.remote_root and "owner" in f.preserve,
                           merged, keep)

    def view(self, f: FolderConfig) -> LinkView | None:
        """What `status` and the metrics show of the folder's link (None: a local target)."""
        if f.remote is None:
            return None
        status = self.links.get(f.remote.link)
        if status is None:
            return None
        now = self.clock()
        return LinkView(host=str(f.remote.link), state=str(status.state), since_s=now - status.since,
                        last_error=status.last_error, rtt_ms=status.rtt_ms, reconnects=status.reconnects,
                        retry_in_s=max(0.0, status.retry_at - now) if status.state is LinkState.DOWN else None)

    def up(self, link: Link) -> bool:
        status = self.links.get(link)
        return status is not None and status.state is LinkState.UP

    # -- the loop's side ----------------------------------------------------------------
    def deadline(self) -> float | None:
        deadlines = []
        for status in self.links.values():
            if status.state is LinkState.CONNECTING:
                deadlines.append(self.clock() + 0.02)  # the master's socket appears once it is in
            elif status.state is LinkState.DOWN:
                deadlines.append(status.retry_at)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        for link, status in list(self.links.items()):
            if status.state is LinkState.DOWN:
                if now >= status.retry_at:
                    self._connect(link, status)
                continue
            dead = next((m for m in status.masters if m.proc is None or m.proc.poll() is not None), None)
            if dead is not None:
                self._failed(link, status, _error_of(dead), now)
            elif status.state is LinkState.CONNECTING:
                if all(os.path.exists(m.socket) for m in status.masters):
                    self._up(link, status, now)
                elif now - status.attempt_at > status.params.connect_timeout + 5:
                    self._failed(link, status, "the connection was not made in time", now)
        self._bound_held()

    def suspect(self, folder: str, error: str) -> None:
        """A worker could not reach the folder's host: the masters are looked at on the next
        tick; said at most once a minute per folder while it lasts."""
        now = self.clock()
        if now - self._said.get(folder, -SUSPECT_EVERY) >= SUSPECT_EVERY:
            self._said[folder] = now
            self.log.warning("remote_transfer_failed", folder=folder, error=error,
                             action="the changes wait and are sent again")
        self.wake()

    def _connect(self, link: Link, status: LinkStatus) -> None:
        self._close(status)
        status.state, status.attempt_at = LinkState.CONNECTING, self.clock()
        status.masters = []
        for i in range(status.connections):
            # Numbered: two links to one host (another user or port) never share a socket.
            master = _Master(os.path.join(self._run_dir(), f"{next(self._seq)}-{_slug(link)}-{i}"))
            master.errors = tempfile.TemporaryFile()
            try:
                master.proc = self._spawn(master_argv(status.params, master.socket), master.errors)
            except OSError as exc:
                master.errors.write(f"cannot run ssh: {exc.strerror}".encode())
            else:
                threading.Thread(target=_await_exit, args=(master.proc, self.wake), name=f"ssh-{link.host}",
                                 daemon=True).start()
            status.masters.append(master)

    def _up(self, link: Link, status: LinkStatus, now: float) -> None:
        status.rtt_ms = self._rtt(status)
        status.state, status.since, status.failures = LinkState.UP, now, 0
        first = not status.was_up
        status.was_up = True
        if not first:
            status.reconnects += 1
        self.log.info("remote_up", host=str(link), rtt_ms=status.rtt_ms, connections=status.connections,
                      reconnect=not first)
        for name in self._folders_on(link):
            problem = self._prove(status, self.folders[name].config)
            if problem is not None:
                self.drop_folder(name, problem, "fix the remote side, then reload (systemctl reload foldermirror, "
                                                "or SIGHUP); the other folders are served")
                continue
            self._note_unkept(status, self.folders[name].config)
            self.changes.release(name)
            # The comparison runs first: what changed on either side meanwhile is found,
            # under the mass-delete guard; the held paths join the same queue.
            self._compare_on_up.discard(name)
            self.request_catch_up(name, "startup" if first else "remote_up")

    def _prove(self, status: LinkStatus, f: FolderConfig) -> str | None:
        """Make the folder's remote root and prove rsync there; the problem, or None."""
        remote = f.remote
        assert remote is not None
        proof = probe.run(session_argv(status.params, status.masters[0].socket), remote.link.host,
                          self.ssh.for_host(remote.link.host).rsync_path, remote.path, make=True, url=str(remote),
                          timeout=status.params.connect_timeout)
        if proof.problem is None:
            status.rsync_version = proof.rsync_version
            status.remote_root = proof.root_user
            status.rsync_lacks = proof.rsync_lacks
        return proof.problem

    def _note_unkept(self, status: LinkStatus, f: FolderConfig) -> None:
        """At link-up: what the folder's preserve: asks for and its remote cannot keep (the
        remote rsync built without ACLs or xattrs, the remote file system refusing them, owners
        without a remote root), said once per folder while it stays so; the files are
        mirrored without it."""
        remote = f.remote
        assert remote is not None
        wanted: list[str] = [n for n in ("xattrs", "acls") if n in f.preserve and n not in status.rsync_lacks]
        refused: list[str] = []
        error = ""
        if wanted:
            options = self.ssh.for_host(remote.link.host)
            refused, error = probe.refused_attrs(
                session_argv(status.params, status.masters[0].socket), remote.link.host, remote.link.user,
                options.rsync_path, remote.path, wanted, temp_name("probe"), status.params.connect_timeout)
        self._refused[f.name] = tuple(refused)
        lacking = [n for n in ("xattrs", "acls") if n in f.preserve and n in status.rsync_lacks]
        owner = "owner" in f.preserve and not status.remote_root
        said = (*lacking, *refused, *(("owner",) if owner else ()))
        if self._unkept_said.get(f.name) == said:
            return
        self._unkept_said[f.name] = said
        if lacking or refused:
            why = []
            if lacking:
                why.append(f"the remote rsync was built without {' and '.join(lacking)}")
            if refused:
                why.append(f"the remote file system refuses {' and '.join(refused)}: {error}")
            self.log.warning("preserve_unsupported", folder=f.name, target=str(remote),
                             unsupported=[*lacking, *refused], error="; ".join(why) + "; files are mirrored without them",
                             fix=f"install an rsync with ACL and xattr support on {remote.link.host}, or mirror onto a "
                                 f"file system that keeps them, or remove {', '.join([*lacking, *refused])} from folder "
                                 f"{f.name}'s preserve: to keep this quiet")
        if owner:
            self.log.info("owner_not_kept", folder=f.name, target=str(remote), user=remote.link.user or "",
                          reason="only a remote root can give files another owner (rsync -o -g): the remote copies "
                                 "belong to the remote user",
                          fix="to keep owners, log in as root on the remote host; otherwise nothing to do, or remove "
                              "owner from preserve: to keep this quiet")

    def _failed(self, link: Link, status: LinkStatus, error: str, now: float) -> None:
        self._close(status)
        status.failures += 1
        options = self.ssh.for_host(link.host)
        low, high = options.retry_min, options.retry_max
        delay = min(high, low * 2 ** (status.failures - 1)) * random.uniform(0.8, 1.2)
        status.retry_at = now + delay
        was = status.state
        status.state, status.last_error = LinkState.DOWN, error
        if self.once:
            for name in self._folders_on(link):
                self.drop_folder(name, f"target {self.folders[name].config.target}: {error}", _fix(error))
            return
        if was is LinkState.UP or status.failures == 1:
            self.log.error("remote_down", host=str(link), error=error, retry_in_s=round(delay, 1),
                           folders=self._folders_on(link), fix=_fix(error))
        else:
            self.log.warning("remote_retry", host=str(link), error=error, attempt=status.failures,
                             retry_in_s=round(delay, 1))
        for name in self._folders_on(link):
            self.changes.hold(name)
        if was is LinkState.UP:
            status.since = now

    def _bound_held(self) -> None:
        held = {name: self.changes.counts(name)[0]
                for link, status in self.links.items() if status.state is not LinkState.UP
                for name in self._folders_on(link) if name not in self._compare_on_up}
        for link, status in self.links.items():  # already dropped: the comparison on reconnect covers them
            if status.state is not LinkState.UP:
                for name in self._folders_on(link):
                    if name in self._compare_on_up and self.changes.counts(name)[0]:
                        self.changes.forget(name)
        total = sum(held.values())
        for name, count in sorted(held.items(), key=lambda kv: -kv[1]):
            if total <= HELD_MAX:
                break
            total -= count
            self.changes.forget(name)
            self._compare_on_up.add(name)
            self.log.warning("remote_backlog_dropped", folder=name, paths=count, limit=HELD_MAX,
                             action="the folder is compared as a whole once its host is back")

    def _folders_on(self, link: Link) -> list[str]:
        out = []
        for name, state in self.folders.items():
            remote = state.config.remote
            if remote is not None and remote.link == link:
                out.append(name)
        return out

    def _rtt(self, status: LinkStatus) -> float | None:
        """The round trip of a session through the master (None: it failed)."""
        start = time.monotonic()
        try:
            done = subprocess.run([*session_argv(status.params, status.masters[0].socket), "--",
                                   status.params.link.host, "true"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=RTT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return round((time.monotonic() - start) * 1000, 1) if done.returncode == 0 else None

    # -- shutdown -----------------------------------------------------------------------
    def _close(self, status: LinkStatus) -> None:
        for master in status.masters:
            if master.proc is not None and master.proc.poll() is None:
                master.proc.terminate()
                try:
                    master.proc.wait(timeout=1)  # OpenSSH 9.2 may miss a SIGTERM that lands just before its poll()
                except subprocess.TimeoutExpired:
                    master.proc.kill()
                    master.proc.wait()
            if master.errors is not None:
                master.errors.close()
                master.errors = None
            try:
                os.unlink(master.socket)
            except OSError:
                pass

    def stop(self) -> None:
        for status in self.links.values():
            self._close(status)
        self.links.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _run_dir(self) -> str:
        # Short: a socket path must fit in 107 bytes. Private: the sockets are logins.
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="fm-ssh-")
        return self._dir


@functools.lru_cache(maxsize=1024)  # an `ssh -G` per link and settings, not per batch or reload
def _aes_first(params: SshParams) -> bool:
    return wants_aes_first(params, _cpu_has_aes())


@functools.cache
def _cpu_has_aes() -> bool:
    return cpu_has_aes()


def params_for(options: SshOptions, link: Link) -> SshParams:
    assert options.known_hosts is not None  # the config refuses a remote target without it
    params = SshParams(link, str(options.known_hosts), str(options.identity_file) if options.identity_file else None,
                       options.connect_timeout, options.keepalive, options.compress, options.options)
    return params._replace(aes_first=_aes_first(params))


def remote_spec(f: FolderConfig, ssh: SshConfig, sockets: tuple[str, ...], remote_root: bool = False,
                merged_delete: bool = False, keep: tuple[str, ...] = ()) -> RemoteSpec:
    """What a worker needs to reach the folder's target: through these masters' sockets
    (none: a login of its own, for a one-off command)."""
    remote = f.remote
    assert remote is not None
    options = ssh.for_host(remote.link.host)
    params = params_for(options, remote.link)
    argvs = tuple(tuple(session_argv(params, s)) for s in sockets) or (tuple(direct_argv(params)),)
    return RemoteSpec(remote.link.host, remote.link.user, remote.path, argvs, options.rsync_path,
                      max(1, round(options.io_timeout)), options.bwlimit, remote_root, merged_delete, keep)


_SETPRIV = shutil.which("setpriv")


def _spawn(argv: list[str], errors: IO[bytes]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C at the terminal reaches the daemon, which stops the master
    # itself. The kernel kills it when the daemon dies (setpriv sets PR_SET_PDEATHSIG, which
    # fires when the thread that started it ends: the main thread, the daemon's lifetime),
    # so a kill -9 of the daemon leaves no master logged in behind it.
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
    return subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                            start_new_session=True)


def _await_exit(proc: subprocess.Popen[bytes], wake: Callable[[], None]) -> None:
    proc.wait()
    wake()


def _error_of(master: _Master) -> str:
    text = ""
    if master.errors is not None:
        master.errors.seek(0)
        text = master.errors.read().decode(errors="replace").strip()
    rc = master.proc.returncode if master.proc is not None else None
    last = text.splitlines()[-1] if text else ""
    return last or f"ssh exited with status {rc}"


def _fix(error: str) -> str:
    low = error.lower()
    if low.startswith("setpriv:") or ("connect to host" in low and low.endswith(": failure")):
        # The shipped units without remote-targets.conf: ~@privileged denies setpriv's capset(2),
        # RestrictAddressFamilies= ssh's socket() (ssh then says only "failure").
        return ("the service's sandbox forbids what ssh needs: install systemd/remote-targets.conf as a drop-in "
                "(README: Run as a service), then systemctl daemon-reload and restart the service")
    if "host key verification failed" in low or "no ed25519 host key is known" in low or "host key" in low:
        return ("the host's key is not the one in known_hosts: check its fingerprint, then update the file "
                "(ssh-keyscan); until then nothing is sent")
    if "permission denied" in low:
        return "the key is not accepted: add the public key to the remote user's ~/.ssh/authorized_keys"
    if "connection refused" in low:
        return "nothing listens on that port: start sshd on the host, or fix the port in the target"
    if "timed out" in low or "timeout" in low or "not made in time" in low:
        # (IPAddressDeny= drops packets, loopback's too: a connection times out like one to a host that is off.)
        return ("the host does not answer: check it is up and reachable (under systemd, with an IPAddressAllow= "
                "list in the drop-in, that it holds the host's address); the daemon keeps retrying")
    return "the daemon keeps retrying with back-off; changes wait and are sent once the host is back"


def _slug(link: Link) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in link.host)[:40] + (f"_{link.port}" if link.port else "")
