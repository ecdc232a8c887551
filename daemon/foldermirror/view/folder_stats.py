"""Per-folder counters since start, fed by the result collector; read by status and metrics.

Written on the collector and reconcile threads, read on the control and metrics threads:
each field is a plain int or a reference swapped whole, so readers see a value that was
true a moment ago, which is all a status report promises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from foldermirror.errors import error_kind

MIRRORED = ("copied", "renamed")
SETTLED = ("copied", "renamed", "deleted", "unchanged", "gone", "skipped")


@dataclass(frozen=True)
class LastError:
    path: str
    error: str
    kind: str          # errno name or "other"
    at: float          # wall-clock time.time()


@dataclass
class FolderStats:
    files: int = 0                 # files and symlinks mirrored (renames too); directories are not counted
    bytes: int = 0
    deleted: int = 0
    failures: dict[str, int] = field(default_factory=dict)   # by error kind
    failing: dict[str, LastError] = field(default_factory=dict)  # paths whose last attempt failed
    last_error: LastError | None = None
    directories: int | None = None  # source directories in the last full walk (None: not walked yet)
    unreadable: tuple[str, ...] = ()  # directories the walks could not list, as paths in the folder

    def record(self, path: str, status: str, kind: str, nbytes: int, error: str, err_no: int) -> None:
        """Account for one outcome reported by a worker."""
        # Files and symlinks only: two workers racing to make one directory (a file's parent,
        # and the directory's own item) may both report it, so a count would not match the tree.
        if status in MIRRORED and kind != "dir":
            self.files += 1
            self.bytes += nbytes
        elif status == "deleted":
            self.deleted += 1
        if status == "failed":
            kind = error_kind(err_no)
            self.failures[kind] = self.failures.get(kind, 0) + 1
            self.last_error = self.failing[path] = LastError(path, error, kind, time.time())
        elif status in SETTLED:
            self.failing.pop(path, None)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())
