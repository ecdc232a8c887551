"""Per-folder counts since start: the one place an Outcome is interpreted for counting.

Fed by the result recorder (one call per outcome), read by `status`, `STATUS=`, the
metrics, catch-up progress and the daemon_stopped line. Written on the collector and
reconcile threads, read on the control and metrics threads: each field is a plain int or
a reference swapped whole, so readers see a value that was true a moment ago, which is
all a status report promises.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from foldermirror.errors import error_kind
from foldermirror.pipeline.records import Outcome, Status


class Tally(NamedTuple):
    """Counts at one moment; the difference of two is what happened in between."""

    files: int = 0     # files and symlinks mirrored (renames too); directories are not counted
    bytes: int = 0
    deleted: int = 0
    failed: int = 0

    def since(self, earlier: Tally) -> Tally:
        return Tally(*(now - then for now, then in zip(self, earlier, strict=True)))


@dataclass(frozen=True)
class LastError:
    path: str
    error: str
    errno: str         # errno name or "other"
    at: float          # wall-clock time.time()


@dataclass
class FolderStats:
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    failures: dict[str, int] = field(default_factory=dict)   # by errno name
    failing: dict[str, LastError] = field(default_factory=dict)  # paths whose last attempt failed
    last_error: LastError | None = None
    directories: int | None = None  # source directories in the last full walk (None: not walked yet)
    unreadable: tuple[str, ...] = ()  # directories the walks could not list, as paths in the folder
    # Wall-clock time.time() the last catch-up ended whose comparison of the whole folder ran
    # to its end (None: none yet since start).
    last_full_comparison: float | None = None

    def record(self, o: Outcome) -> None:
        """Account for one outcome reported by a worker."""
        # Files and symlinks only: two workers racing to make one directory (a file's parent,
        # and the directory's own item) may both report it, so a count would not match the tree.
        if o.status.mirrored and o.kind != "dir":
            self.files += 1
            self.bytes += o.bytes
        elif o.status is Status.DELETED:
            self.deleted += 1
        if o.status is Status.FAILED:
            name = error_kind(o.errno)
            self.failures[name] = self.failures.get(name, 0) + 1
            self.last_error = self.failing[o.path] = LastError(o.path, o.error, name, time.time())
        elif o.status.settled:
            self.failing.pop(o.path, None)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def tally(self) -> Tally:
        return Tally(self.files, self.bytes, self.deleted, self.failed)


def total(stats: Iterable[FolderStats]) -> Tally:
    return Tally(*(sum(column) for column in zip(*(s.tally() for s in stats), strict=True)))
