"""The records that cross the process boundary between the daemon and its workers.

Standard library only: the workers import this. Named tuples, not dataclasses, because a
batch pickles thousands of them and a tuple subclass pickles as little more than its values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

# (st_dev, st_ino) of a folder root as the daemon last saw it
RootId = tuple[int, int]
# (st_dev, st_ino) of a source file: what names of one inode (hard links) share
InodeId = tuple[int, int]


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
    # A file with other names (st_nlink > 1) sent without `link_to`: nothing was done; the
    # recorder sends it again with the names of its inode already mirrored (`inode` says which).
    HAS_LINKS = "has_links"

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
    dirs: int = 0                  # a deleted directory: the directories kept, itself included


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
    # Hard links (a folder that preserves them): the source inode of a file published or
    # found in place with st_nlink > 1, and of a HAS_LINKS file; None otherwise.
    inode: InodeId | None = None
    linked_to: str | None = None   # published as a hard link of this name's mirror, not a copy


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
    hardlinks: bool = False        # names of one source inode are one inode in the target


class WorkItem(NamedTuple):
    """One path for a worker: mirror it; with `origin`, first try to rename origin → path."""

    position: int                  # its place in the batch, echoed in its ItemResult
    folder: FolderSpec
    path: str
    origin: str | None = None
    busy: bool = False             # changing for max_delay already: publish what it was if it only grew
    # Hard links: None, nobody has looked (a file with other names comes back HAS_LINKS);
    # a tuple, the other names of its inode already mirrored, tried in turn (each checked
    # against the source first), () when there are none: publish a copy.
    link_to: tuple[str, ...] | None = None


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
