"""Start-up checks that tell the operator what to do: folder access, inotify limits, PrivateTmp.

Each check returns what it found; service.py decides what to log and what to skip.
"""

from __future__ import annotations

import errno
import os
import pwd
from dataclasses import dataclass

from foldermirror import copier, faults
from foldermirror.config import Config, FolderConfig, under_private_tmp

WATCHES_SYSCTL = "fs.inotify.max_user_watches"
WATCHES_FILE = "/proc/sys/fs/inotify/max_user_watches"


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _why(exc: OSError) -> str:
    return copier._describe(exc)


def folder_problem(f: FolderConfig, instance: str) -> str | None:
    """Create what the config asks for, then prove the source readable and the target writable.

    Returns one sentence naming the path and the cause, or None when the folder can be served.
    A missing source is not a problem here: the watcher waits for it to come back.
    """
    if f.create:
        try:
            os.makedirs(f.source, exist_ok=True)
        except OSError as exc:
            return f"cannot create source {f.source}: {_why(exc)}"
    if os.path.isdir(f.source):
        try:
            with os.scandir(f.source) as entries:
                next(entries, None)
        except OSError as exc:
            return f"source {f.source} is not readable by {_user()}: {_why(exc)}"
        if not os.access(f.source, os.R_OK | os.X_OK):
            return f"source {f.source} is not readable by {_user()}: permission denied"
    try:
        os.makedirs(f.target, exist_ok=True)
    except OSError as exc:
        return f"cannot create target {f.target}: {_why(exc)}" + _read_only_hint(exc)
    # A real write, not os.access(): that misses read-only mounts (ProtectSystem=strict
    # without ReadWritePaths=) and is always true for root.
    probe = os.path.join(f.target, copier.temp_name(instance))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return f"target {f.target} is not writable by {_user()}: {_why(exc)}" + _read_only_hint(exc)
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        return f"target {f.target} does not let {_user()} remove files: {_why(exc)}"
    return None


def _read_only_hint(exc: OSError) -> str:
    if exc.errno == errno.EROFS and os.environ.get("INVOCATION_ID"):
        return ("; under systemd (ProtectSystem=strict) list the target in ReadWritePaths= "
                "in a drop-in, see README 'Run as a service'")
    return ""


# -- inotify watches -------------------------------------------------------------------
def max_user_watches() -> int | None:
    """The kernel's per-user inotify watch limit; tests may override it through faults."""
    override = faults.value("max_user_watches")
    if override is not None:
        return int(override)
    try:
        with open(WATCHES_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def count_directories(root: str) -> int:
    """Directories under `root`, itself included: one inotify watch each. Symlinks are not followed."""
    count = 0
    stack = [root]
    while stack:
        path = stack.pop()
        count += 1
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                    except OSError:
                        pass
        except OSError:
            pass  # unreadable or gone: reported by the catch-up walk
    return count


@dataclass(frozen=True)
class WatchShortage:
    limit: int
    needed: int

    @property
    def suggested(self) -> int:
        """The need plus a quarter for growth, rounded up to a thousand."""
        return -(-(self.needed * 5 // 4) // 1000) * 1000


def watch_shortage(folders: tuple[FolderConfig, ...], limit: int | None) -> WatchShortage | None:
    if limit is None:
        return None
    needed = sum(count_directories(str(f.source)) for f in folders if os.path.isdir(f.source))
    return WatchShortage(limit, needed) if needed > limit else None


# -- PrivateTmp ------------------------------------------------------------------------
def private_tmp_paths(config: Config) -> list[tuple[str, str]]:
    """(key, path) for every configured path that systemd's PrivateTmp= would hide."""
    if not os.environ.get("INVOCATION_ID"):
        return []
    found = [("--config", str(config.path))]
    for i, f in enumerate(config.folders):
        found += [(f"folders[{i}].source", str(f.source)), (f"folders[{i}].target", str(f.target))]
    return [(key, path) for key, path in found if under_private_tmp(path)]
