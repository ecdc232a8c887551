"""One daemon per target: an exclusive flock on a lock file in the target's root.

`run` and `sync` hold one TargetLock per folder served. The lock lives as long as the open
file description: it dies with its holder however that ends (exit, crash, SIGKILL), so a
lock file left behind is never stale and is never removed. The file says who holds it
(one JSON line: pid and config path), written once the lock is taken; its name is
reserved (tempnames.LOCK_NAME): comparisons, workers and dry runs never treat it as data.

The fd is O_CLOEXEC, and the pool's workers come from a fork server started by exec, so
no child holds a copy of the lock (a forked holder would keep it alive after we exit).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field

from foldermirror.errors import FoldermirrorError
from foldermirror.pipeline.copier import describe as _describe
from foldermirror.pipeline.worker import pid_alive as _alive
from foldermirror.tempnames import LOCK_NAME

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
# The holder writes who it is just after taking the lock: a reader that comes in between
# sees an empty file (or the last holder's line), so it looks again for this long.
HOLDER_WAIT = 1.0
_ATTEMPTS = 5  # the lock file replaced between our open and our flock: open it again


class TargetLocked(FoldermirrorError):
    """Another process holds the lock of this target."""

    def __init__(self, target: str, pid: int | None, config: str | None) -> None:
        self.target = target
        self.pid = pid
        self.config = config
        who = f"pid {pid}" if pid else "another process (pid unknown)"
        super().__init__(f"{target} is already mirrored by {who} ({config or 'config unknown'})")


@dataclass
class TargetLock:
    """A held lock; release() (or the end of this process) gives it up."""

    target: str
    path: str
    _fd: int = field(repr=False)
    _identity: tuple[int, int] = field(repr=False)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Give the lock up (the file stays). Calling it again does nothing."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the only fd of the open file description drops the flock

    def intact(self) -> bool:
        """Whether the lock file at `path` is still the inode we hold the lock on.

        False once released, or when the file or the whole target was deleted, renamed or
        replaced under us: another process could then take a lock on the new path.
        """
        if self._fd < 0:
            return False
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity


def acquire(target_dir: str, config_path: str) -> TargetLock:
    """Take the exclusive lock of `target_dir` (which must exist) for this process.

    Raises TargetLocked naming the holder when another open file description holds it
    (another process, or another acquire() in this one), FoldermirrorError when the lock
    file cannot be opened.
    """
    path = os.path.join(target_dir, LOCK_NAME)
    for _ in range(_ATTEMPTS):
        fd = _open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, config = _holder(fd)
                raise TargetLocked(target_dir, pid, config) from None
            st = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # we locked a file that is no longer at the path
                fd = -1
                continue
            line = json.dumps({"pid": os.getpid(), "config": config_path}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
            lock, fd = TargetLock(target_dir, path, fd, (st.st_dev, st.st_ino)), -1
            return lock
        except OSError as exc:
            raise FoldermirrorError(f"cannot lock {path}: {_describe(exc)}") from None
        finally:
            if fd >= 0:
                os.close(fd)
    raise FoldermirrorError(f"cannot lock {path}: the file was replaced {_ATTEMPTS} times while taking the lock")


def _open(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS, 0o644)
    except OSError as exc:
        what = {errno.ELOOP: "it is a symlink (remove it)",
                errno.EISDIR: "it is a directory (remove or rename it)"}.get(exc.errno or 0) or _describe(exc)
        raise FoldermirrorError(f"cannot open the lock file {path}: {what}") from None


def _holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, config) the holder wrote; waits up to HOLDER_WAIT for a live holder's line."""
    deadline = time.monotonic() + HOLDER_WAIT
    while True:
        pid, config = _read(fd)
        if (pid and _alive(pid)) or time.monotonic() >= deadline:
            return pid, config
        time.sleep(0.02)


def _read(fd: int) -> tuple[int | None, str | None]:
    try:
        data = json.loads(os.pread(fd, 8192, 0))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    pid, config = data.get("pid"), data.get("config")
    return (pid if isinstance(pid, int) else None), (config if isinstance(config, str) else None)
