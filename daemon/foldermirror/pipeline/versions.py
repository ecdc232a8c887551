"""The versions area of a folder: what the mirror replaces or deletes is kept there first.

Standard library only (workers use the Keeper). Layout, the same for local and remote
targets: the version of PATH replaced (or deleted) at a UTC time is the file
`AREA/PATH~YYYYmmddTHHMMSS.ffffffZ`. Directories in the area are the path's directories;
every other entry is a version, named by the last `~` (a name with `~` in it stays
readable: `a~b~20261201T101010.000000Z` is a version of `a~b`). A directory deleted from
the mirror is kept as well, as the empty file `AREA/PATH/~STAMP` (nothing before the `~`:
the version of the area directory's own path) with the directory's mode, owner and mtime,
so a restore can make it again, empty or not. rsync's `--backup-dir=AREA --suffix=~STAMP`
writes the same layout on a remote host, for files only (it keeps no directory).

Keeping costs no copy: the target's entry is link(2)ed into the area, then replaced
(rename over it) or deleted as without versions. If the link cannot be made, the
replace or delete does not happen: the Keeper raises, and the path fails and is retried.
"""

from __future__ import annotations

import calendar
import errno
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from foldermirror.pipeline.records import Kept
from foldermirror.tempnames import remove_own

SEP = "~"
# What a failure to keep a version says first (results.py gives it a fix naming the area).
NOT_KEPT = "cannot keep a version"
_STAMP = re.compile(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)\.(\d{6})Z$")
DIR_MODE = 0o700  # the area shows names the mirror's directories may hide: its own are private
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTEMPTS = 16


def stamp(ns: int) -> str:
    """A UTC time as a version name's suffix: 20261201T141643.123456Z."""
    secs, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f".{rest // 1000:06d}Z"


def parse_stamp(text: str) -> int | None:
    """The time (ns since the epoch) of a stamp, or None when `text` is not one."""
    m = _STAMP.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, us = (int(g) for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 62):
        return None
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    return secs * 1_000_000_000 + us * 1000


def version_name(name: str, ns: int) -> str:
    return f"{name}{SEP}{stamp(ns)}"


def version_suffix(ns: int) -> str:
    """What rsync's --suffix adds to a path it backs up, for the same layout on a remote host."""
    return f"{SEP}{stamp(ns)}"


def dir_version_name(ns: int) -> str:
    """The name of a directory's version, inside the area directory of its own path."""
    return version_name("", ns)


def split_version(name: str) -> tuple[str, int] | None:
    """(the path's own name, its time) of a version's file name; None for another name."""
    base, sep, text = name.rpartition(SEP)
    if not sep or not base:
        return None
    ns = parse_stamp(text)
    return None if ns is None else (base, ns)


class AreaName(NamedTuple):
    """What the name of an entry in the area says it is a version of."""

    path: str          # the path in the folder
    ns: int            # when it left the mirror
    is_dir: bool       # the version of a directory itself (`~STAMP`)


def split_entry(rel: str, name: str) -> AreaName | None:
    """What the entry `name` (not a directory) of the area directory `rel` is a version of;
    None when it is not a version. The area's root holds no directory version: the folder's
    root is never deleted."""
    base, sep, text = name.rpartition(SEP)
    ns = parse_stamp(text) if sep else None
    if ns is None:
        return None
    if not base:
        return AreaName(rel, ns, True) if rel else None
    return AreaName(f"{rel}/{base}" if rel else base, ns, False)


class Version(NamedTuple):
    """One kept version, as the listing and the pruning see it."""

    path: str          # the path in the folder it is a version of
    ns: int            # when it left the mirror (ns since the epoch, UTC)
    size: int
    kind: str          # file, symlink or dir
    name: str          # its path relative to the area

    @property
    def time(self) -> str:
        return stamp(self.ns)


def walk(area: str, under: str = "") -> Iterator[Version]:
    """Every version in the area at or below `under` (a folder path); nothing when there is no area."""
    start = os.path.join(area, under) if under else area
    stack = [under]
    if under:
        # `under` may name a file: its versions sit beside it in its parent.
        parent = under.rpartition("/")[0]
        yield from (v for v in _versions_in(area, parent) if v.path == under)
        if not os.path.isdir(start):
            return
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(area, rel) if rel else area))
        except OSError:
            continue
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(child)
                continue
            v = _version(entry, rel)
            if v is not None:
                yield v


def _versions_in(area: str, rel: str) -> list[Version]:
    try:
        entries = list(os.scandir(os.path.join(area, rel) if rel else area))
    except OSError:
        return []
    return [v for e in entries if not e.is_dir(follow_symlinks=False) and (v := _version(e, rel)) is not None]


def _version(entry: os.DirEntry[str], rel: str) -> Version | None:
    parsed = split_entry(rel, entry.name)
    if parsed is None:
        return None
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    kind = "dir" if parsed.is_dir else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    name = f"{rel}/{entry.name}" if rel else entry.name
    return Version(parsed.path, parsed.ns, st.st_size, kind, name)


class Keeper:
    """Keeps versions of one target's entries in its area (a worker's, for one batch)."""

    def __init__(self, area: str, durable: bool = False) -> None:
        self.area = area
        self.durable = durable  # the folder's durable: a version's entry is synced before what replaces it
        self._root: int | None = None
        self._dirs: dict[tuple[str, ...], int] = {}
        self.kept: dict[str, Kept] = {}   # by path, since the last take()

    def take(self) -> dict[str, Kept]:
        """The versions kept since the last call, by path (between two paths: the fd cache is bounded here)."""
        kept, self.kept = self.kept, {}
        if len(self._dirs) > 128:
            self.close()
        return kept

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self._root is not None:
            os.close(self._root)
            self._root = None

    def keep(self, dfd: int, name: str, parts: Sequence[str], st: os.stat_result) -> None:
        """Link the entry `name` of directory fd `dfd` (the target's `parts`) into the area.

        A directory: every file and directory below it and itself, all with one time. Raises
        OSError (NOT_KEPT first) when a version cannot be made; then nothing of it is left in
        the area.
        """
        ns = time.time_ns()
        path = "/".join(parts)
        try:
            if stat.S_ISDIR(st.st_mode):
                made: list[tuple[int, str]] = []
                try:
                    tree = self._keep_tree(dfd, name, tuple(parts), st, ns, made)
                except BaseException:
                    for afd, vname in made:
                        remove_own(vname, afd)
                    raise
                self.kept[path] = tree
            else:
                self._keep_one(dfd, name, tuple(parts), ns)
                self.kept[path] = Kept(f"{path}{SEP}{stamp(ns)}", 1, st.st_size)
        except OSError as exc:
            if exc.strerror and exc.strerror.startswith(NOT_KEPT):
                raise
            raise OSError(exc.errno or errno.EIO, f"{NOT_KEPT} in the versions area {self.area}: "
                          f"{exc.strerror or exc}; "
                          "nothing was replaced or deleted") from None

    def _keep_one(self, dfd: int, name: str, parts: tuple[str, ...], ns: int,
                  made: list[tuple[int, str]] | None = None) -> str:
        afd = self._dir(parts[:-1])
        for attempt in range(_ATTEMPTS):
            vname = version_name(parts[-1], ns + attempt * 1000)  # the same microsecond: the next one
            try:
                os.link(name, vname, src_dir_fd=dfd, dst_dir_fd=afd, follow_symlinks=False)
            except FileExistsError:
                continue
            if made is not None:
                made.append((afd, vname))
            if self.durable:
                os.fsync(afd)
            return vname
        raise OSError(errno.EEXIST, f"{NOT_KEPT}: {_ATTEMPTS} versions of {'/'.join(parts)} in one instant")

    def _keep_tree(self, dfd: int, name: str, parts: tuple[str, ...], st: os.stat_result, ns: int,
                   made: list[tuple[int, str]]) -> Kept:
        """The directory `name` (as `st`) and everything below it; what was kept, by count."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        files = size = dirs = 0
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                est = entry.stat(follow_symlinks=False)
                child = (*parts, entry.name)
                if stat.S_ISDIR(est.st_mode):
                    below = self._keep_tree(fd, entry.name, child, est, ns, made)
                    files, size, dirs = files + below.files, size + below.bytes, dirs + below.dirs
                else:
                    self._keep_one(fd, entry.name, child, ns, made)
                    files, size = files + 1, size + est.st_size
        finally:
            os.close(fd)
        self._keep_dir(parts, st, ns, made)
        return Kept("/".join(parts), files, size, dirs + 1)

    def _keep_dir(self, parts: tuple[str, ...], st: os.stat_result, ns: int, made: list[tuple[int, str]]) -> None:
        """The version of a directory itself: an empty file in its own area directory, with the
        directory's mode, owner (where this process may give it) and mtime."""
        afd = self._dir(parts)
        for attempt in range(_ATTEMPTS):
            vname = dir_version_name(ns + attempt * 1000)
            try:
                fd = os.open(vname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=afd)
            except FileExistsError:
                continue
            made.append((afd, vname))
            try:
                _carry(fd, st)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.durable:
                os.fsync(afd)
            return
        raise OSError(errno.EEXIST, f"{NOT_KEPT}: {_ATTEMPTS} versions of {'/'.join(parts)} in one instant")

    def _dir(self, parts: tuple[str, ...]) -> int:
        if self._root is None:
            try:
                self._root = os.open(self.area, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                os.makedirs(self.area, DIR_MODE, exist_ok=True)
                self._root = os.open(self.area, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if not parts:
            return self._root
        fd = self._dirs.get(parts)
        if fd is not None:
            return fd
        parent = self._dir(parts[:-1])
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            try:
                os.mkdir(parts[-1], DIR_MODE, dir_fd=parent)
            except FileExistsError:
                pass
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            # Something not made by us stands where the area needs a directory.
            raise OSError(errno.ENOTDIR, f"{NOT_KEPT}: {'/'.join(parts)} in the versions area "
                          "is not a directory") from None
        self._dirs[parts] = fd
        return fd


def _carry(fd: int, st: os.stat_result) -> None:
    """Give the open file `fd` the owner, mode and mtime of `st` (the owner only where allowed)."""
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except OSError:
        pass  # not root: the entry stays the service user's, as the mirror's own directories are then
    os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after the chown, which drops setuid and setgid bits
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
