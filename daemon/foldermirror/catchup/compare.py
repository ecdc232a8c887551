"""Tree comparison: what differs between a source and its target (type, size, mtime, mode;
owner, xattrs and ACLs when the folder preserves them).

The only judge of what is out of date at start-up, after an overflow, for a subtree that
appeared, and on every periodic rescan. It feeds the ChangeQueue; it never copies. The
target side is read through the folder's Target, as the workers write it.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from foldermirror.paths import Excluder
from foldermirror.pipeline.copier import SourceTree
from foldermirror.pipeline.fidelity import Keep, keep_for, read_attrs
from foldermirror.pipeline.records import InodeId
from foldermirror.pipeline.targets import ROOT_FLAGS, Entry, LocalTarget, Target, TargetGone, scan_dir, stale_temps
from foldermirror.tempnames import LOCK_NAME, is_reserved, is_temp_name


@dataclass
class Difference:
    path: str
    reason: str        # missing | differs | metadata | extra | special | reserved (a source entry named LOCK_NAME)
    # metadata: bytes and mtime match, owner, xattrs or ACLs do not (the worker sets only those)


@dataclass
class WalkStats:
    entries: int = 0          # source entries compared
    differences: int = 0
    copies: int = 0           # of those, files and symlinks to copy (what catch-up progress counts)
    copy_bytes: int = 0       # the source size of those files: what sync's progress bar counts up to
    stale_temps: int = 0
    directories: int = 0      # source directories walked, the root included: what inotify must watch
    unreadable: list[str] | None = None
    target_entries: int = 0   # target entries seen, counting everything below an extra directory
    doomed: int = 0           # of those, how many the extras would delete


# A whole-folder comparison deleting fewer entries than this is never held back.
MASS_DELETE_MIN = 10


def hold_deletions(stats: WalkStats, max_fraction: float) -> bool:
    """True when a walk's deletions look like a vanished source rather than a decision.

    A source that looks empty while its target is not, or that lost more than
    `max_fraction` of the target's entries (and at least MASS_DELETE_MIN), is what a
    failed mount or a wrong path looks like; 1 turns the guard off.
    """
    if max_fraction >= 1 or stats.doomed == 0:
        return False
    if stats.entries == 0:
        return True
    return stats.doomed >= MASS_DELETE_MIN and stats.doomed > max_fraction * stats.target_entries


def _open_root(path: str) -> int | None:
    try:
        return os.open(path, ROOT_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None


# Hard links: told of each source file with other names, as (its inode, its path).
LinkSeen = Callable[[InodeId, str], None]


def diff_tree(source: str, target: str, excluded: Excluder, delete: bool, instance: str,
              sub: str = "", stats: WalkStats | None = None,
              writer_alive: Callable[[int], bool] = lambda pid: True,
              clean_temps: bool = True, preserve: tuple[str, ...] = (),
              links: LinkSeen | None = None, skip: Callable[[str], bool] | None = None) -> Iterator[Difference]:
    """Yield every path under `sub` whose mirror is missing, differs, or (with delete) is extra.

    Directories are opened component by component relative to directory fds with
    O_NOFOLLOW, as the workers do: a directory swapped for a symlink is never walked into,
    on either side. An unreadable source directory is reported in `stats.unreadable` and
    its mirror left alone. Temp files are removed on the way when their writer is gone:
    another daemon instance (a crash or a kill) or one of our workers that died; live
    workers' are left alone. With `clean_temps=False` (a dry run) they are only counted.
    `preserve`: the folder's preserve: names; owners, xattrs and ACLs of entries whose type,
    size, mtime and mode match are compared too when it keeps them (and this process can).
    With `links` (the folder keeps hard links) each file with other names is told to it,
    and a name whose mirror is not the same file as its inode's first name's mirror differs.
    `skip`: entries other than directories it says are taken care of are not compared (a
    multi-linked file's names are, where `links` maps them).
    """
    stats = stats if stats is not None else WalkStats()
    if stats.unreadable is None:
        stats.unreadable = []
    try:
        sroot = _open_root(source)
    except PermissionError:
        stats.unreadable.append(sub)
        return
    if sroot is None:
        return  # a missing source root is never a reason to delete anything
    try:
        keep = keep_for(preserve)
        mirror: Target | None = LocalTarget(target, delete=delete, durable=False, instance=instance, create=False,
                                            keep=keep)
    except (TargetGone, NotADirectoryError):
        mirror = None
    tree = SourceTree(sroot)
    if isinstance(mirror, LocalTarget):
        keep = mirror.keep  # less what its file system refuses: never a difference there
    try:
        yield from _walk(tree, mirror, excluded, delete, instance, sub, stats, writer_alive, clean_temps, keep,
                         None if links is None else _Links(links), source, skip)
    finally:
        tree.close()
        if mirror is not None:
            mirror.close()


class _Links:
    """Hard links in one walk: each source inode's first mirror seen, (st_dev, st_ino) in the target."""

    def __init__(self, seen: LinkSeen) -> None:
        self.seen = seen
        self.first: dict[InodeId, tuple[int, int]] = {}

    def apart(self, path: str, s: Entry, t: Entry | None) -> bool:
        """Whether `path`'s mirror, `t`, is another file than its inode's other names' mirror."""
        inode = (s.dev, s.ino)
        self.seen(inode, path)
        if t is None or t.ino == 0:
            return False
        first = self.first.setdefault(inode, (t.dev, t.ino))
        return first != (t.dev, t.ino)


def source_links(source: str, excluded: Excluder, seen: LinkSeen, sub: str = "") -> None:
    """Tell `seen` of every file with other names under `sub` of a source (for a remote
    target, whose comparison is rsync's: the map of names is the source's alone)."""
    try:
        sroot = _open_root(source)
    except PermissionError:
        return
    if sroot is None:
        return
    tree = SourceTree(sroot)
    try:
        stack = [sub]
        while stack:
            rel = stack.pop()
            try:
                sfd = tree.find(tuple(rel.split("/")) if rel else ())
                entries = scan_dir(sfd) if sfd is not None else {}
            except PermissionError:
                entries = {}
            tree.forget()
            for name, s in entries.items():
                path = f"{rel}/{name}" if rel else name
                if excluded(path):
                    continue
                if s.kind == stat.S_IFDIR:
                    stack.append(path)
                elif s.kind == stat.S_IFREG and s.nlink > 1:
                    seen((s.dev, s.ino), path)
    finally:
        tree.close()


def _walk(source: SourceTree, target: Target | None, excluded: Excluder, delete: bool, instance: str, sub: str,
          stats: WalkStats, writer_alive: Callable[[int], bool], clean_temps: bool,
          keep: Keep, links: _Links | None, source_root: str,
          skip: Callable[[str], bool] | None) -> Iterator[Difference]:
    assert stats.unreadable is not None
    stack = [sub]
    while stack:
        rel = stack.pop()
        parts = tuple(rel.split("/")) if rel else ()
        try:
            sfd = source.find(parts)
            s_entries = scan_dir(sfd) if sfd is not None else {}
        except PermissionError:
            source.forget()
            stats.unreadable.append(rel)
            continue
        if sfd is None and rel == "":
            return
        if sfd is not None:
            stats.directories += 1
        scanned: dict[str, Entry] | None = None
        try:
            scanned = target.scan(parts) if target is not None else None
        except PermissionError:
            pass  # the copies under it will fail and say so
        t_entries = scanned if scanned is not None else {}
        try:
            yield from _compare(rel, parts, sfd, target if scanned is not None else None, s_entries, t_entries,
                                excluded, delete, instance, stats, writer_alive, stack, clean_temps, keep,
                                links, source_root, skip)
        finally:
            # One directory's fds at a time on each side, however big the tree, and each
            # directory looked up afresh from its root (a rename meanwhile is not followed).
            source.forget()
            if target is not None:
                target.forget()


def _compare(rel: str, parts: tuple[str, ...], sfd: int | None, target: Target | None,
             s_entries: dict[str, Entry], t_entries: dict[str, Entry], excluded: Excluder, delete: bool,
             instance: str, stats: WalkStats, writer_alive: Callable[[int], bool], stack: list[str],
             clean_temps: bool, keep: Keep, links: _Links | None, source_root: str,
             skip: Callable[[str], bool] | None) -> Iterator[Difference]:
    def metadata_differs(name: str, s: Entry, t: Entry) -> bool:
        if keep.owner and (s.uid, s.gid) != (t.uid, t.gid):
            return True
        if not keep.attrs or sfd is None or target is None:
            return False
        # Read by a path from the root, not through sfd (/proc/self/fd/N/name costs twice the
        # lookup): this only decides what to look at again, and a rename meanwhile makes
        # events of its own.
        where = f"{source_root}/{rel}/{name}" if rel else f"{source_root}/{name}"
        try:
            return read_attrs(where, keep) != target.attrs((*parts, name))
        except OSError:
            return True  # gone or unreadable meanwhile: the worker looks again and says why

    for name, s in s_entries.items():
        path = f"{rel}/{name}" if rel else name
        if name == LOCK_NAME:
            yield Difference(path, "reserved")  # not mirrored; the worker says so (file_skipped)
            continue
        if excluded(path, s.kind == stat.S_IFDIR):
            continue  # and, for a directory, all below it: it is not walked
        stats.entries += 1
        # A name of a multi-linked file is always walked where links are mapped: the map of
        # its inode's names is rebuilt from what the walk sees.
        if skip is not None and s.kind != stat.S_IFDIR and (links is None or s.nlink == 1) and skip(path):
            continue
        t = t_entries.get(name)
        if t is not None:
            stats.target_entries += 1
        if s.kind == stat.S_IFDIR:
            if t is None or t.kind != s.kind or t.mode != s.mode:
                stats.differences += 1
                yield Difference(path, "missing" if t is None else "differs")
            elif metadata_differs(name, s, t):
                stats.differences += 1
                yield Difference(path, "metadata")
            stack.append(path)
        elif s.kind == stat.S_IFREG:
            apart = links is not None and s.nlink > 1 and links.apart(path, s, t)
            if t is None or t.kind != s.kind or (t.size, t.mtime_ns) != (s.size, s.mtime_ns) or apart:
                stats.differences += 1
                stats.copies += 1
                stats.copy_bytes += s.size
                yield Difference(path, "missing" if t is None else "differs")
            elif t.mode != s.mode or metadata_differs(name, s, t):
                stats.differences += 1
                stats.copies += 1
                yield Difference(path, "metadata")
        elif s.kind == stat.S_IFLNK:
            if (t is None or t.kind != s.kind or target is None
                    or _readlink(sfd, name) != target.readlink((*parts, name))):
                stats.differences += 1
                stats.copies += 1
                yield Difference(path, "missing" if t is None else "differs")
            elif keep.owner and (s.uid, s.gid) != (t.uid, t.gid):
                stats.differences += 1
                stats.copies += 1
                yield Difference(path, "metadata")
        elif t is None or t.kind != s.kind:
            yield Difference(path, "special")
    temps = [name for name in t_entries if is_temp_name(name)]
    if temps and target is not None:
        if clean_temps:
            stats.stale_temps += target.remove_stale_temps(parts, temps, instance, writer_alive)
        else:
            stats.stale_temps += len(stale_temps(temps, instance, writer_alive))
    for name, t in t_entries.items():
        if name in s_entries or is_reserved(name):  # temp files and the lock file: never deleted nor counted
            continue
        path = f"{rel}/{name}" if rel else name
        # The target entry's own type: a directory-only pattern keeps an extra directory,
        # never an extra file of that name.
        if delete and not excluded(path, t.kind == stat.S_IFDIR):
            if t.kind == stat.S_IFDIR and excluded and target is not None \
                    and _holds_excluded(target, (*parts, name), path, excluded):
                # Deleting it would delete excluded entries with it: it stays, and what
                # else is in it is compared (with nothing on the source side) and deleted.
                stats.target_entries += 1
                stack.append(path)
                continue
            below = target.entries_below((*parts, name)) if t.kind == stat.S_IFDIR and target is not None else 0
            stats.target_entries += 1 + below
            stats.doomed += 1 + below
            stats.differences += 1
            yield Difference(path, "extra")


def _holds_excluded(target: Target, parts: tuple[str, ...], rel: str, excluded: Excluder) -> bool:
    """Whether a target directory holds an excluded entry at any depth (only asked with patterns)."""
    todo = [(parts, rel)]
    while todo:
        here, path = todo.pop()
        try:
            entries = target.scan(here) or {}
        except OSError:
            return True  # cannot tell: keep it, and let the walk into it say what fails
        finally:
            target.forget(here)  # one directory's fd at a time, however big the extra tree
        for name, entry in entries.items():
            if is_reserved(name):
                continue  # a temp file or lock: the daemon's own, not data to keep
            below = f"{path}/{name}"
            is_dir = entry.kind == stat.S_IFDIR
            if excluded(below, is_dir):
                return True
            if is_dir:
                todo.append(((*here, name), below))
    return False


def _readlink(dfd: int | None, name: str) -> str | None:
    if dfd is None:
        return None
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError:
        return None


@dataclass(frozen=True)
class Request:
    folder: str
    sub: str
    reason: str        # startup | overflow | rescan | subtree | reload | watch_restored | hardlinks
    ready: bool        # False: let the settle timer run (files may still be written)
    # Only paths the ChangeQueue does not know yet (neither pending nor in flight): a new
    # directory's entries that came without events. The ones it knows are mirrored anyway,
    # and queuing them again would copy a burst's files twice. Nor are those handed out
    # since `since` (the ChangeQueue's clock when the directory's watch was in place) even
    # compared: every change after that came with an event of its own.
    only_unknown: bool = False
    since: float = 0.0

    def covers(self, other: Request) -> bool:
        """Whether this walk makes `other` redundant."""
        # A walk for hard links' names ends no catch-up: it never stands in for one that does.
        return (self.folder == other.folder and covers(self.sub, other.sub) and self.ready >= other.ready
                and (other.only_unknown or not self.only_unknown)
                and (not self.only_unknown or self.since >= other.since)
                and (self.reason != "hardlinks" or other.reason == "hardlinks"))


class Reconciler:
    """A thread that walks folders on request and feeds the differences to a callback."""

    def __init__(self, walk: Callable[[Request], None]) -> None:
        self._walk = walk
        self._requests: list[Request] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, req: Request) -> None:
        with self._cond:
            # A queued walk of the same folder that covers this subtree makes it redundant.
            if any(queued.covers(req) for queued in self._requests):
                return
            self._requests = [q for q in self._requests if not req.covers(q)]
            self._requests.append(req)
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return not self._requests and not self._busy

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._requests.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._requests and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                req = self._requests.pop(0)
                self._busy = True
            try:
                self._walk(req)
            finally:
                with self._cond:
                    self._busy = False


def covers(outer: str, inner: str) -> bool:
    return outer == "" or inner == outer or inner.startswith(outer + "/")

