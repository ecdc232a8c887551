"""The records that cross the process boundary between the daemon and its workers.

Standard library only: the workers import this. Named tuples, not dataclasses, because a
batch pickles thousands of them and a tuple subclass pickles as little more than its values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

# (st_dev, st_ino) of a folder root as the daemon last saw it
RootId = tuple[int, int]


class Status(StrEnum):
    """What a worker did with one path; every reader of outcomes shares these."""

    COPIED = "copied"              # published: a file, symlink or directory (or its mode)
    RENAMED = "renamed"            # a rename replayed in the target
    DELETED = "deleted"            # removed from the target
    UNCHANGED = "unchanged"        # the mirror already matched
    GONE = "gone"                  # absent from both sides (or the target keeps it: delete: false)
    SKIPPED = "skipped"            # not mirrored by design (FIFO, socket, device, a reserved name)
    CHANGED = "changed"            # the source changed during the copy: nothing published, look again
    FAILED = "failed"              # an error; `error` and `errno` say which
    LINK_DOWN = "link_down"        # a remote target could not be reached: nothing is known, try again
    ROOT_CHANGED = "root_changed"  # the source root is gone or replaced: nothing was touched
    STALE = "stale"                # seen before its folder was reloaded or its root changed: dropped

    @property
    def mirrored(self) -> bool:
        return self in (Status.COPIED, Status.RENAMED)

    @property
    def settled(self) -> bool:
        """The path's last attempt ended without an error to report."""
        return self in _SETTLED


_SETTLED = frozenset({Status.COPIED, Status.RENAMED, Status.DELETED, Status.UNCHANGED, Status.GONE, Status.SKIPPED})


class Kept(NamedTuple):
    """A version kept of what the mirror replaced or deleted (see versions.py)."""

    path: str                      # relative to the versions area: PATH~STAMP, or a directory's PATH
    files: int                     # 1, or the files kept of a deleted directory
    bytes: int


class Outcome(NamedTuple):
    """The result of one path (a file's parents made on the way have outcomes of their own)."""

    path: str
    status: Status
    kind: str = "unknown"          # file, dir, symlink, fifo, socket, device or unknown
    bytes: int = 0
    error: str = ""
    errno: int = 0
    renamed_from: str | None = None
    version_kept: Kept | None = None  # what the target held there before, kept in the versions area


class RemoteSpec(NamedTuple):
    """How a worker reaches a remote target: through one of the link's ssh masters."""

    host: str
    user: str | None
    path: str                      # the target's absolute path on the host
    ssh: tuple[tuple[str, ...], ...]  # per master, the ssh command that goes through it only
    rsync_path: str
    io_timeout: int                # seconds: rsync's --timeout
    bwlimit: int | None            # KiB/s
    preserve_owner: bool
    # The remote rsync takes existing and missing paths in one --delete-missing-args pass
    # (3.4.4 and later); older ones get a pass per directory for the missing ones.
    merged_delete: bool = False
    keep: tuple[str, ...] = ()     # the folder's preserve: names the remote keeps (rsync -X -A -S)


class FolderSpec(NamedTuple):
    """What a worker needs of a folder; one object per folder per batch."""

    source: str
    target: str
    delete: bool
    durable: bool
    root_id: RootId | None
    remote: RemoteSpec | None = None
    versions: str | None = None    # the versions area (a path on the target's host); None: versions off
    preserve: tuple[str, ...] = ()  # the folder's preserve: names (config.PRESERVABLE)


class WorkItem(NamedTuple):
    """One path for a worker: mirror it; with `origin`, first try to rename origin → path."""

    position: int                  # its place in the batch, echoed in its ItemResult
    folder: FolderSpec
    path: str
    origin: str | None = None
    busy: bool = False             # changing for max_delay already: publish what it was if it only grew


class ItemResult(NamedTuple):
    position: int
    outcomes: list[Outcome]
    duration_ns: int


class Hello(NamedTuple):
    """A worker started (so the pool can tell when one is gone)."""

    pid: int


class BatchResults(NamedTuple):
    """Results of part of a batch: workers send them in groups, not per item."""

    generation: int
    task_id: int
    results: list[ItemResult]
    pid: int


WorkerMessage = Hello | BatchResults
