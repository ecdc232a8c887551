"""Names of the daemon's own in a target: temp files and the lock file. Standard library only.

A temp file's name says which daemon instance and worker wrote it, so a comparison can
remove those whose writer is gone (a crash, a kill) and leave live workers' alone. Both
kinds are reserved at every depth: never copied from a source, nor deleted, replaced or
moved in a target, nor counted by a comparison.
"""

from __future__ import annotations

import os
import random

TEMP_PREFIX = ".foldermirror-"
TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".foldermirror.lock"  # see targetlock.py
RESERVED_REASON = f"the name {LOCK_NAME} is reserved for foldermirror's lock file"

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def temp_name(instance: str) -> str:
    """A temp file name that says which daemon instance and worker wrote it."""
    # No system call per file: the pid is remembered, and random is reseeded in a forked child.
    return f"{TEMP_PREFIX}{instance}-{_pid}-{random.getrandbits(48):012x}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def is_reserved(name: str) -> bool:
    """A name of the daemon's own in a target (a temp file or the lock file), never mirrored data."""
    return name == LOCK_NAME or is_temp_name(name)


def remove_own(name: str, dir_fd: int | None = None) -> None:
    """Remove an entry the daemon itself just made (a temp file, a version's link) after a
    failure; one already gone is fine, and nothing here may hide the failure itself."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def temp_owner(name: str) -> tuple[str, int]:
    """(daemon instance, worker pid) of a temp file; ("", 0) for a name not of that form."""
    parts = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return ("", 0)
    return (parts[0], int(parts[1]))
