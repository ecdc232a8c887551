"""The other half of the Target seam: the health of a folder's mirror as a whole.

Workers and the comparison go through `targets.Target` path by path; the main process asks
a `TargetHealth` whether the mirror can be served at all: whether its root is writable
(`probe`, for start-up, reload and `check`), which directory stands there (`identity`, so a
root deleted or replaced behind the daemon's back is noticed) and to make it again
(`remake`). `LocalTargetHealth`, a directory on this machine, is the first implementation.
Standard library only.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple, Protocol

from foldermirror.pipeline.copier import describe
from foldermirror.tempnames import temp_name

RootId = tuple[int, int]  # (st_dev, st_ino)


class Probe(NamedTuple):
    problem: str | None  # one sentence naming the path and the cause; None: writable
    proved: str = ""     # what was shown, for `check`'s verdict
    config_error: bool = False  # the problem is the config's (exit 78), not the machine's


class TargetHealth(Protocol):
    def probe(self, *, create: bool, user: str) -> Probe: ...
    def identity(self) -> RootId | None: ...
    def remake(self) -> None: ...


class LocalTargetHealth:
    def __init__(self, root: str, instance: str) -> None:
        self.root = root
        self.instance = instance

    def probe(self, *, create: bool, user: str) -> Probe:
        """Prove the root writable by `user` with a real write of a temp file, removed at once.

        create=True (run, sync) makes the root first. create=False (check) makes nothing:
        where the root is missing, the nearest existing parent it would be made in must be
        writable instead.
        """
        target = self.root
        where = target
        if create:
            try:
                os.makedirs(target, exist_ok=True)
            except OSError as exc:
                return Probe(f"cannot create target {target}: {describe(exc)}" + read_only_hint(exc))
        else:
            try:
                where = missing_from(target) or target
            except OSError as exc:
                return Probe(f"cannot create target {target}: {why_at(exc, target)}")
        label = f"target {target}" if where == target else f"cannot create target {target}: {where}"
        problem = probe_write(where, self.instance, label, user)
        if problem is not None:
            return Probe(problem)
        return Probe(None, f"target writable by {user}" if where == target
                     else f"target {target} does not exist yet: run creates it in {where}, writable by {user}")

    def identity(self) -> RootId | None:
        return path_identity(self.root)

    def remake(self) -> None:
        """Make the root again (it was deleted); raises the OSError that prevents it."""
        os.makedirs(self.root, exist_ok=True)


class RemoteTargetHealth:
    """A target on another machine: its link's supervisor (remote/links.py) proves it once the
    host is reached; here, only what can be known without connecting."""

    def __init__(self, url: str, known_hosts: str | None, host_name: str) -> None:
        self.url = url
        self.known_hosts = known_hosts
        self.host_name = host_name  # as known_hosts names it

    def probe(self, *, create: bool, user: str) -> Probe:
        if self.known_hosts is not None and not _host_known(self.known_hosts, self.host_name):
            return Probe(f"target {self.url}: the host key of {self.host_name} is not in {self.known_hosts}; "
                         f"after checking its fingerprint, add it: ssh-keyscan -H {_keyscan_args(self.host_name)} "
                         f">> {self.known_hosts}", config_error=True)
        return Probe(None, f"host key of {self.host_name} known; the remote side is proved once connected")

    def identity(self) -> RootId | None:
        return None

    def remake(self) -> None:
        """The remote side makes its root itself (mkdir -p on connecting)."""


def _host_known(known_hosts: str, name: str) -> bool:
    import subprocess  # noqa: PLC0415 - only for remote targets

    try:
        done = subprocess.run(["ssh-keygen", "-F", name, "-f", known_hosts], capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell here: the connection says so, naming the file
    return done.returncode == 0 and bool(done.stdout.strip())


def _keyscan_args(name: str) -> str:
    if name.startswith("[") and "]:" in name:
        host, port = name[1:].split("]:", 1)
        return f"-p {port} {host}"
    return name


def path_identity(path: str) -> RootId | None:
    """(st_dev, st_ino) of a folder, following symlinks; None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def probe_write(directory: str, instance: str, label: str, user: str) -> str | None:
    """Create and remove a temp file in `directory`; None when both worked, else what failed."""
    # A real write, not os.access(): that misses read-only mounts (ProtectSystem=strict
    # without ReadWritePaths=) and is always true for root.
    probe = os.path.join(directory, temp_name(instance))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return f"{label} is not writable by {user}: {describe(exc)}" + read_only_hint(exc)
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        return f"{label} does not let {user} remove files: {describe(exc)}"
    return None


def missing_from(path: str) -> str | None:
    """The existing directory in which os.makedirs(path) would create its first folder.

    None when `path` is a directory already. Creates nothing; raises the error makedirs would
    for something that is not a directory in the way.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return None
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):  # "/" exists: this ends
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), parent)
    return parent


def why_at(exc: OSError, path: str) -> str:
    """describe(exc), naming the path that failed when it is not `path` itself."""
    if exc.filename and os.path.abspath(exc.filename) != os.path.abspath(path):
        return f"{exc.filename}: {describe(exc)}"
    return describe(exc)


def read_only_hint(exc: OSError) -> str:
    if exc.errno == errno.EROFS and os.environ.get("INVOCATION_ID"):
        return ("; under systemd (ProtectSystem=strict) list the target in ReadWritePaths= "
                "in a drop-in, see README 'Run as a service'")
    return ""
