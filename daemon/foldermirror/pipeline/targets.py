"""The mirror side of a folder: everything workers and the comparison do to a target.

`Target` is the seam, path by path; `LocalTarget`, a directory on this machine, is its
implementation. The mirror as a whole (writable? still the same directory?) is the other
half of the seam, in target_health.py.
Standard library only (workers use it). Every path component is opened relative to a
directory fd with O_NOFOLLOW, so a target directory swapped for a symlink is never
followed; files are published as a temp file renamed into place, so no partial file is
ever visible under its real name; directory fds are cached for the life of the object
(a worker's batch, or one directory of a comparison walk).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from foldermirror.pipeline.fidelity import NOTHING, Attrs, Keep, apply_attrs, at, on_target, read_attrs, same_owner
from foldermirror.pipeline.records import Kept
from foldermirror.pipeline.versions import Keeper
from foldermirror.tempnames import is_reserved, is_temp_name, remove_own, temp_name, temp_owner

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Directory fds kept within one batch; a batch is short, so a directory renamed meanwhile
# is caught by the comparison its move event triggers.
DIR_CACHE_MAX = 128

Parts = Sequence[str]
# The mode (and owner) a directory made in the target gets: its source directory's stat.
SourceDirStat = Callable[[Parts], os.stat_result]
# Fill an open temp file; returns the bytes to publish, or None when the source changed meanwhile.
Writer = Callable[[int], "int | None"]


class Entry(NamedTuple):
    """What the comparison knows of one directory entry, on either side."""

    kind: int          # stat.S_IFMT
    size: int
    mtime_ns: int
    mode: int
    uid: int = -1
    gid: int = -1
    ino: int = 0       # hard links: (dev, ino) and link count (0, 0, 1 where unknown: a remote side)
    dev: int = 0
    nlink: int = 1


class Target(Protocol):
    """The operations on a mirror, one folder's, relative to its root."""

    def lstat(self, parts: Parts) -> os.stat_result | None: ...
    def readlink(self, parts: Parts) -> str | None: ...
    def publish_file(self, parts: Parts, st: os.stat_result, write: Writer, source_dir: SourceDirStat,
                     existing: os.stat_result | None = None, attrs: Attrs | None = None) -> int | None: ...
    def publish_symlink(self, parts: Parts, link: str, st: os.stat_result, source_dir: SourceDirStat,
                        attrs: Attrs | None = None) -> None: ...
    def publish_dir(self, parts: Parts, st: os.stat_result, source_dir: SourceDirStat,
                    attrs: Attrs | None = None) -> bool: ...
    def update_metadata(self, parts: Parts, st: os.stat_result, attrs: Attrs | None,
                        existing: os.stat_result) -> bool: ...
    def attrs(self, parts: Parts, symlink: bool = False) -> Attrs: ...
    def chown_link(self, parts: Parts, st: os.stat_result) -> None: ...
    def publish_link(self, existing: Parts, parts: Parts, source_dir: SourceDirStat,
                     tst: os.stat_result | None = None) -> None: ...
    def delete(self, parts: Parts) -> int | None: ...
    def rename(self, origin: Parts, parts: Parts, source_dir: SourceDirStat) -> int | None: ...
    def scan(self, parts: Parts) -> dict[str, Entry] | None: ...
    def entries_below(self, parts: Parts) -> int: ...
    def remove_stale_temps(self, parts: Parts, names: list[str], instance: str,
                           writer_alive: Callable[[int], bool]) -> int: ...
    def made_dirs(self) -> list[str]: ...
    def kept_versions(self) -> dict[str, Kept]: ...
    def trim(self) -> None: ...
    def forget(self, under: Parts = ()) -> None: ...
    def close(self) -> None: ...


class TargetGone(Exception):
    """The target root cannot be opened (it is made only when publishing)."""


class DirFds:
    """A folder's root fd and the fds of its directories opened so far, by path parts
    (owned by the cache: callers never close them)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._dirs: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self.forget()
        os.close(self.root_fd)

    def trim(self) -> None:
        """Between two paths (never during one: its fds are in use): bound the open fds."""
        if len(self._dirs) > DIR_CACHE_MAX:
            self.forget()

    def forget(self, under: Parts = ()) -> None:
        """Drop cached directories at and below `under` (all by default): removed or renamed."""
        prefix = tuple(under)
        for key in [k for k in self._dirs if k[:len(prefix)] == prefix]:
            os.close(self._dirs.pop(key))


class LocalTarget(DirFds):
    """A target directory on this machine (see the module docstring).

    `delete`: an entry of another type in the way may be removed (else EEXIST). `durable`:
    fsync each file and its directory before it counts as published. `keep`: what the
    folder preserves beside bytes, mode and mtime (fidelity.py), as far as this process can.
    """

    def __init__(self, root: str, *, delete: bool, durable: bool, instance: str, create: bool = True,
                 keep: Keep = NOTHING, versions: str | None = None) -> None:
        self.root = root
        # Set once the file system refused extended attributes (ENOTSUP): the files are
        # mirrored without them; the folder's start-up check said so once.
        self.attrs_refused = False
        # What this target replaces or deletes is kept there first (see versions.py).
        self.keeper = Keeper(versions, durable) if versions is not None else None
        self.clears_way = delete  # delete: true lets what stands in a path's way go
        self.durable = durable
        self.instance = instance
        try:
            root_fd = os.open(root, ROOT_FLAGS)
        except FileNotFoundError:
            if not create:
                raise TargetGone(root) from None
            os.makedirs(root, exist_ok=True)
            root_fd = os.open(root, ROOT_FLAGS)
        super().__init__(root_fd)
        # What the folder keeps, less what this file system refuses (said once at start:
        # checks.note_unkept): neither set nor compared there.
        self.keep = on_target(root_fd, keep)
        self._made: list[str] = []  # directories made as the parents of others, since the last made_dirs()

    def made_dirs(self) -> list[str]:
        """Directories made as parents since the last call (each is reported as mirrored)."""
        made, self._made = self._made, []
        return made

    # -- versions: the hooks where an existing entry is replaced or removed ------------------
    def kept_versions(self) -> dict[str, Kept]:
        """Versions kept since the last call, by path (each path's outcome names its own)."""
        return self.keeper.take() if self.keeper is not None else {}

    def _keep_version(self, dfd: int, name: str, parts: Parts, st: os.stat_result | None) -> None:
        """Before `name` (parts, as `st`) is replaced or removed: keep it, or raise and touch nothing."""
        if self.keeper is not None and st is not None:
            self.keeper.keep(dfd, name, parts, st)

    def close(self) -> None:
        if self.keeper is not None:
            self.keeper.close()
        super().close()

    # -- directories -------------------------------------------------------------------
    def _dir(self, parts: Parts, source_dir: SourceDirStat | None = None) -> int:
        """An fd of root/parts (owned by the cache); with `source_dir`, missing components
        are made with their source directory's mode and owner."""
        if not parts:
            return self.root_fd
        key = tuple(parts)
        fd = self._dirs.get(key)
        if fd is not None:
            return fd
        parent = self._dir(parts[:-1], source_dir)
        name = parts[-1]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if source_dir is None or exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            if exc.errno != errno.ENOENT:
                self._clear_way(parent, name, key)
            fd = self._make_parent(parent, name, parts, source_dir)
        self._dirs[key] = fd
        return fd

    def _make_parent(self, parent: int, name: str, parts: Parts, source_dir: SourceDirStat) -> int:
        sst = source_dir(parts)
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            self._made.append("/".join(parts))
        except FileExistsError:
            pass
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        if self.keep.owner:
            _chown(fd, sst)
        os.fchmod(fd, stat.S_IMODE(sst.st_mode))
        return fd

    def _parent(self, parts: Parts, source_dir: SourceDirStat | None) -> int | None:
        """The fd of the directory holding parts[-1]; None when it is not there (and not made)."""
        try:
            return self._dir(parts[:-1], source_dir)
        except OSError as exc:
            if source_dir is None and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise

    def _clear_way(self, dfd: int, name: str, key: Parts) -> None:
        """Something of another type stands where the source has this path."""
        if not self.clears_way:
            raise OSError(errno.EEXIST, "the target has a different file type here and delete: false keeps it")
        self._remove(dfd, name, key)

    def _remove(self, dfd: int, name: str, key: Parts) -> None:
        self.forget(key)
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        self._keep_version(dfd, name, key, st)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)

    # -- queries -----------------------------------------------------------------------
    def lstat(self, parts: Parts) -> os.stat_result | None:
        dfd = self._parent(parts, None)
        return None if dfd is None else _lstat(dfd, parts[-1])

    def readlink(self, parts: Parts) -> str | None:
        dfd = self._parent(parts, None)
        if dfd is None:
            return None
        try:
            return os.readlink(parts[-1], dir_fd=dfd)
        except OSError:
            return None

    # -- publishing ----------------------------------------------------------------------
    def publish_file(self, parts: Parts, st: os.stat_result, write: Writer, source_dir: SourceDirStat,
                     existing: os.stat_result | None = None, attrs: Attrs | None = None) -> int | None:
        """Publish a file with `st`'s mode, owner and times: `write` fills a temp file that is
        renamed over parts only if it returns a size. Returns that size, or None.
        `existing`: what lstat(parts) found just before (spares a second look). `attrs`: the
        source's kept extended attributes and ACLs, set on the temp file before its rename
        (after the chown, which drops a file capability, and before the fchmod, which then
        brings an ACL's mask in line with the mode)."""
        dfd = self._dir(parts[:-1], source_dir)
        name = parts[-1]
        tmp = temp_name(self.instance)
        # O_RDWR: a busy file's copy is read back (see the copier's _grew_only).
        tfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        published = False
        try:
            size = write(tfd)
            if size is None:
                return None
            if self.keep.owner:
                _chown(tfd, st)
            self._set_attrs(tfd, attrs)
            os.fchmod(tfd, stat.S_IMODE(st.st_mode))
            os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            if self.durable:
                os.fsync(tfd)
            os.close(tfd)
            tfd = -1
            self._replace(dfd, tmp, name, parts, existing)
            published = True
            return size
        finally:
            if tfd >= 0:
                os.close(tfd)
            if not published:
                remove_own(tmp, dfd)

    def publish_symlink(self, parts: Parts, link: str, st: os.stat_result, source_dir: SourceDirStat,
                        attrs: Attrs | None = None) -> None:
        dfd = self._dir(parts[:-1], source_dir)
        tmp = temp_name(self.instance)
        os.symlink(link, tmp, dir_fd=dfd)
        try:
            if self.keep.owner:
                try:
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    pass
            self._set_attrs(at(dfd, tmp), attrs, symlink=True)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            self._replace(dfd, tmp, parts[-1], parts, _lstat(dfd, parts[-1]))
        except BaseException:
            remove_own(tmp, dfd)
            raise

    def _replace(self, dfd: int, tmp: str, name: str, parts: Parts, tst: os.stat_result | None) -> None:
        """Rename tmp over name (`tst`: what stands there); a directory in the way goes
        first (with delete: true)."""
        if tst is not None and stat.S_ISDIR(tst.st_mode):
            self._clear_way(dfd, name, parts)
        else:
            self._keep_version(dfd, name, parts, tst)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        if self.durable:
            os.fsync(dfd)

    def publish_link(self, existing: Parts, parts: Parts, source_dir: SourceDirStat,
                     tst: os.stat_result | None = None) -> None:
        """Publish parts as a hard link of the mirror at `existing`: link(2) it to a temp name
        in parts' directory, then rename that over parts (`tst`: what stands there), so the
        name shows the old file or the linked one, never neither."""
        sdir = self._dir(existing[:-1])
        dfd = self._dir(parts[:-1], source_dir)
        tmp = temp_name(self.instance)
        os.link(existing[-1], tmp, src_dir_fd=sdir, dst_dir_fd=dfd, follow_symlinks=False)
        try:
            self._replace(dfd, tmp, parts[-1], parts, tst)
        finally:
            # rename(2) of one name of an inode over another of the same inode does nothing and
            # leaves the temp name: it goes either way.
            remove_own(tmp, dfd)

    def publish_dir(self, parts: Parts, st: os.stat_result, source_dir: SourceDirStat,
                    attrs: Attrs | None = None) -> bool:
        """Make the directory (or give it the source's mode, owner and kept attributes);
        False when it already matched."""
        dfd = self._dir(parts[:-1], source_dir)
        name = parts[-1]
        mode = stat.S_IMODE(st.st_mode)
        tst = _lstat(dfd, name)
        if tst is not None and stat.S_ISDIR(tst.st_mode):
            return self._update(dfd, name, tst, st, attrs)
        if tst is not None:
            self._clear_way(dfd, name, parts)
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            # Another worker made it, for a file inside it, since the lstat above; that
            # worker reports it.
            now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISDIR(now.st_mode):
                raise
            return self._update(dfd, name, now, st, attrs)
        if self.keep.owner:
            try:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                pass
        self._set_attrs(at(dfd, name), attrs)  # a default ACL it inherited goes unless the source has it
        os.chmod(name, mode, dir_fd=dfd)
        return True

    # -- metadata alone ----------------------------------------------------------------------
    def attrs(self, parts: Parts, symlink: bool = False) -> Attrs:
        """The kept attributes of the mirror of parts ({} when absent or refused), for a
        comparison: read by a path from the root, at half the cost of one through a
        directory fd, since a rename meanwhile only makes the answer stale."""
        if not self.keep.attrs:
            return {}
        try:
            return read_attrs(f"{self.root}/{'/'.join(parts)}", self.keep, symlink)
        except (FileNotFoundError, NotADirectoryError):
            return {}

    def update_metadata(self, parts: Parts, st: os.stat_result, attrs: Attrs | None,
                        existing: os.stat_result) -> bool:
        """Give the published file at parts (`existing`: its lstat) `st`'s mode and owner and
        the kept `attrs`, in place (its bytes and mtime already match); False when it already
        had them."""
        return self._update(self._dir(parts[:-1]), parts[-1], existing, st, attrs)

    def chown_link(self, parts: Parts, st: os.stat_result) -> None:
        """Give the mirrored symlink at parts `st`'s owner, in place (its target already matches)."""
        os.chown(parts[-1], st.st_uid, st.st_gid, dir_fd=self._dir(parts[:-1]), follow_symlinks=False)

    def _update(self, dfd: int, name: str, tst: os.stat_result, st: os.stat_result, attrs: Attrs | None) -> bool:
        """Owner, attributes and mode of an existing entry (not a symlink), each only where it
        differs; True when anything changed. Set on the entry itself, as rsync does: a reader
        may see the new ACL a moment before the new mode, never a torn file."""
        mode = stat.S_IMODE(st.st_mode)
        changed = False
        where = at(dfd, name)
        if self.keep.owner and not same_owner(tst, st):
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            changed = True
        if attrs is not None and self.keep.attrs and not self.attrs_refused:
            have = read_attrs(where, self.keep)
            if have != attrs:
                self._set_attrs(where, attrs, have=have)
                changed = not self.attrs_refused
        if changed or stat.S_IMODE(tst.st_mode) != mode:
            # chown drops setuid bits and an ACL write resets the group bits: the mode goes last.
            os.chmod(name, mode, dir_fd=dfd)
            changed = True
        return changed

    def _set_attrs(self, where: int | str, attrs: Attrs | None, symlink: bool = False,
                   have: Attrs | None = None) -> None:
        if attrs is None or not self.keep.attrs or self.attrs_refused:
            return
        if not apply_attrs(where, attrs, self.keep, symlink, have):
            self.attrs_refused = True

    # -- removing and renaming -------------------------------------------------------------
    def delete(self, parts: Parts) -> int | None:
        """Remove parts (a whole tree for a directory); its S_IFMT, or None when absent."""
        dfd = self._parent(parts, None)
        if dfd is None:
            return None
        tst = _lstat(dfd, parts[-1])
        if tst is None:
            return None
        self._remove(dfd, parts[-1], parts)
        return stat.S_IFMT(tst.st_mode)

    def rename(self, origin: Parts, parts: Parts, source_dir: SourceDirStat) -> int | None:
        """Move origin's mirror to parts; its S_IFMT, or None when there is nothing to move
        that way (no origin, or a directory on either side of a replacement)."""
        odir = self._parent(origin, None)
        if odir is None:
            return None
        ost = _lstat(odir, origin[-1])
        if ost is None:
            return None
        ddir = self._dir(parts[:-1], source_dir)
        dst = _lstat(ddir, parts[-1])
        if dst is not None and (stat.S_ISDIR(dst.st_mode) or stat.S_ISDIR(ost.st_mode)):
            return None
        self._keep_version(ddir, parts[-1], parts, dst)  # the origin moves; what it lands on is replaced
        self.forget(origin)
        os.rename(origin[-1], parts[-1], src_dir_fd=odir, dst_dir_fd=ddir)
        if self.durable:
            os.fsync(ddir)
            os.fsync(odir)
        return stat.S_IFMT(ost.st_mode)

    # -- for the comparison ----------------------------------------------------------------
    def scan(self, parts: Parts) -> dict[str, Entry] | None:
        """The entries of directory parts; None when it is not there (or not a directory).

        PermissionError propagates: an unreadable directory is not an empty one.
        """
        try:
            dfd = self._dir(parts)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink: mirrored as one, never walked into
                return None
            raise
        return scan_dir(dfd)

    def entries_below(self, parts: Parts) -> int:
        """How many entries lie below directory parts (what deleting it removes)."""
        try:
            dfd = self._dir(parts)
        except OSError:
            return 0
        try:
            total = 0
            for name, entry in scan_dir(dfd).items():
                if is_reserved(name):
                    continue
                total += 1
                if entry.kind == stat.S_IFDIR:
                    total += self.entries_below((*parts, name))
            return total
        except OSError:
            return 0
        finally:
            self.forget(parts)

    def remove_stale_temps(self, parts: Parts, names: list[str], instance: str,
                           writer_alive: Callable[[int], bool]) -> int:
        """Remove the temp files among `names` whose writer is gone: another daemon instance
        (a crash or a kill), or a worker of ours that died. Returns how many went."""
        try:
            dfd = self._dir(parts)
        except OSError:
            return 0
        removed = 0
        for name in stale_temps(names, instance, writer_alive):
            try:
                os.unlink(name, dir_fd=dfd)
                removed += 1
            except OSError:
                pass
        return removed


def scan_dir(dfd: int) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    with os.scandir(dfd) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out[entry.name] = Entry(stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode),
                                   st.st_uid, st.st_gid, st.st_ino, st.st_dev, st.st_nlink)
    return out


def stale_temps(names: Iterable[str], instance: str, writer_alive: Callable[[int], bool]) -> list[str]:
    """The temp file names among `names` whose writer is gone."""
    out = []
    for name in names:
        owner, pid = temp_owner(name)
        if is_temp_name(name) and (owner != instance or not writer_alive(pid)):
            out.append(name)
    return out


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _chown(fd: int, st: os.stat_result) -> None:
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except OSError:
        pass
