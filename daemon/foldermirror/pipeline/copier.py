"""Mirror one path of a source into its Target: read the source safely, decide, publish.

Standard library only (workers run it). Every source path component is opened relative
to a directory fd with O_NOFOLLOW, so a source folder swapped for a symlink mid-copy
cannot lead a worker out of the source tree. Every operation is idempotent: a
resubmitted batch re-checks and converges.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from foldermirror import faults
from foldermirror.pipeline.fidelity import NOTHING, Attrs, Keep, at, copy_sparse, is_sparse, read_attrs, same_owner
from foldermirror.pipeline.records import Outcome, Status
from foldermirror.pipeline.targets import DIR_FLAGS, DirFds, Parts, Target
from foldermirror.tempnames import RESERVED_REASON, is_reserved

_CHUNK = 1 << 30
# Bytes re-read at the end of a busy file's copied prefix to tell an append from a rewrite.
_GROWTH_CHECK = 4096


class _Gone(Exception):
    """A source path component is missing or is not a directory (or is a symlink)."""


class SourceTree(DirFds):
    """A source folder opened once, with the fds of its directories cached."""

    def dir(self, parts: Parts) -> int:
        """An fd of source/parts; raises _Gone when a component is missing or not a directory."""
        if not parts:
            return self.root_fd
        key = tuple(parts)
        fd = self._dirs.get(key)
        if fd is not None:
            return fd
        parent = self.dir(parts[:-1])
        try:
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise _Gone() from None
            raise
        self._dirs[key] = fd
        return fd

    def find(self, parts: Parts) -> int | None:
        """An fd of source/parts, or None when it is not there (or is a symlink: mirrored as
        one, never walked into). PermissionError propagates: unreadable is not empty."""
        try:
            return self.dir(parts)
        except _Gone:
            return None

    def dir_stat(self, parts: Parts) -> os.stat_result:
        """What a target directory made for `parts` copies (mode, owner)."""
        try:
            return os.fstat(self.dir(parts))
        except _Gone:
            raise OSError(errno.ENOENT, "the source directory vanished during the copy") from None

    def lstat(self, parts: Parts) -> os.stat_result | None:
        try:
            return _lstat(self.dir(parts[:-1]), parts[-1])
        except _Gone:
            return None


class Mirror:
    """Mirrors paths of one source into one target."""

    def __init__(self, source: SourceTree, target: Target, *, delete: bool, keep: Keep = NOTHING,
                 hardlinks: bool = False) -> None:
        self.source = source
        self.target = target
        self.delete = delete
        self.keep = keep  # what the folder preserves beside bytes, mode and mtime (fidelity.py)
        self.hardlinks = hardlinks  # names of one source inode are one inode in the target

    def mirror(self, path: str, origin: str | None, busy: bool = False,
               link_to: tuple[str, ...] | None = None) -> list[Outcome]:
        """The outcomes of one work item: the rename replayed (if asked and possible), the
        origin re-checked, the path itself, led by the directories made on the way."""
        self.source.trim()
        self.target.trim()
        self.target.made_dirs()
        out: list[Outcome] = []
        if origin is not None and self.delete:
            renamed = self.rename(origin, path)
            if renamed is not None:
                out.append(renamed)
            checked = self.sync(origin)
            if checked.status not in (Status.UNCHANGED, Status.GONE):
                out.append(checked)
        result = self.sync(path, busy, link_to)
        # Directories made on the way (the parents of a file) are mirrored too: say so first.
        made = [Outcome(p, Status.COPIED, "dir") for p in self.target.made_dirs()]
        if out and out[0].status is Status.RENAMED and result.status is Status.UNCHANGED:
            return made + out
        return made + out + [result]

    def sync(self, path: str, busy: bool = False, link_to: tuple[str, ...] | None = None) -> Outcome:
        """Mirror one path. `busy`: it has been changing for a while; a file that only grew
        during its copy is published as it was when the copy began (see _file). `link_to`:
        see WorkItem (a file with other names, in a folder that keeps hard links)."""
        parts = path.split("/")
        if is_reserved(parts[-1]):  # copied, or deleted with delete: true, it would clobber ours
            st = self.source.lstat(parts)
            return Outcome(path, Status.SKIPPED, kind(st.st_mode) if st else "unknown", error=RESERVED_REASON)
        try:
            st = self.source.lstat(parts)
            if st is None:
                return self._absent(parts, path)
            if stat.S_ISREG(st.st_mode):
                if self.hardlinks and st.st_nlink > 1:
                    return self._linked_file(parts, path, st, busy, link_to)
                return self._file(parts, path, busy)
            if stat.S_ISLNK(st.st_mode):
                return self._symlink(parts, path, st)
            if stat.S_ISDIR(st.st_mode):
                # Through its parent: a directory the daemon may not read (mode 000) still has them.
                attrs = (read_attrs(at(self.source.dir(parts[:-1]), parts[-1]), self.keep)
                         if self.keep.attrs else None)
                changed = self.target.publish_dir(parts, st, self.source.dir_stat, attrs)
                return Outcome(path, Status.COPIED if changed else Status.UNCHANGED, "dir")
            return self._special(parts, path, st)
        except FileNotFoundError:
            # Something on the way vanished under us (a concurrent deletion, in the source or
            # by another worker in the target): look again once the path has settled.
            return Outcome(path, Status.CHANGED)
        except OSError as exc:
            return Outcome(path, Status.FAILED, error=describe(exc), errno=exc.errno or 0)

    def _special(self, parts: Parts, path: str, st: os.stat_result) -> Outcome:
        """A FIFO, socket or device is not mirrored; with delete, a stale mirror of what
        used to be a regular file at this path goes."""
        if self.delete:
            self._absent(parts, path)
        return Outcome(path, Status.SKIPPED, kind(st.st_mode), error="not a regular file, directory or symlink")

    def _absent(self, parts: Parts, path: str) -> Outcome:
        if not self.delete:
            return Outcome(path, Status.GONE)
        removed = self.target.delete(parts)
        if removed is None:
            return Outcome(path, Status.GONE)
        return Outcome(path, Status.DELETED, kind(removed))

    def _file(self, parts: Parts, path: str, busy: bool) -> Outcome:
        try:
            sdir = self.source.dir(parts[:-1])
        except _Gone:
            return self._absent(parts, path)
        name = parts[-1]
        try:
            # O_NONBLOCK: a FIFO swapped in after the stat must not block this worker.
            sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sdir)
        except FileNotFoundError:
            return self._absent(parts, path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a symlink since the stat
                return Outcome(path, Status.CHANGED, "file")
            raise
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                return Outcome(path, Status.CHANGED, "file")
            tst = self.target.lstat(parts)
            attrs = read_attrs(sfd, self.keep) if self.keep.attrs else None
            if (tst is not None and stat.S_ISREG(tst.st_mode) and tst.st_size == st.st_size
                    and tst.st_mtime_ns == st.st_mtime_ns):
                return self._metadata(parts, path, st, tst, attrs)
            pause = faults.delay("slow_copy", path) if faults.ENABLED else 0.0
            sparse = self.keep.sparse and is_sparse(st) and not pause

            def write(tfd: int) -> int | None:
                copied = copy_sparse(sfd, tfd, st.st_size) if sparse else _copy_data(sfd, tfd, st.st_size, pause)
                after = os.fstat(sfd)
                # ctime too: a same-size rewrite whose mtime was put back (touch -r, cp -p).
                if (copied == after.st_size == st.st_size and after.st_mtime_ns == st.st_mtime_ns
                        and after.st_ctime_ns == st.st_ctime_ns and _same_inode(sdir, name, st)):
                    return copied
                if not (busy and _grew_only(sfd, tfd, st, after, copied) and _same_inode(sdir, name, st)):
                    return None
                # Appended to during the copy: its first st_size bytes are the file as it was
                # at the first fstat, so publish exactly those, with that mtime. The mirror
                # then differs from the source by size and mtime, and the next copy (at the
                # next max_delay, or once quiet) brings the rest.
                os.ftruncate(tfd, st.st_size)
                return st.st_size

            copied = self.target.publish_file(parts, st, write, self.source.dir_stat, tst, attrs)
            if copied is None:
                return Outcome(path, Status.CHANGED, "file")
            return Outcome(path, Status.COPIED, "file", copied)
        finally:
            os.close(sfd)

    def _metadata(self, parts: Parts, path: str, st: os.stat_result, tst: os.stat_result,
                  attrs: Attrs | None) -> Outcome:
        """The mirror's bytes are the source's (size and mtime match): bring its mode, owner
        and kept attributes in line without copying the data (a chmod, chown, setfacl or
        setfattr in the source, heard as IN_ATTRIB). Logged as a copy of 0 bytes."""
        if (stat.S_IMODE(tst.st_mode) == stat.S_IMODE(st.st_mode) and attrs is None
                and (not self.keep.owner or same_owner(tst, st))):
            return Outcome(path, Status.UNCHANGED, "file")  # what a folder keeping nothing pays
        if self.target.update_metadata(parts, st, attrs, tst):
            return Outcome(path, Status.COPIED, "file", 0)
        return Outcome(path, Status.UNCHANGED, "file")

    # -- hard links (kept apart from the plain copy: see _file) ---------------------------------
    def _linked_file(self, parts: Parts, path: str, st: os.stat_result, busy: bool,
                     link_to: tuple[str, ...] | None) -> Outcome:
        """A file with other names. Without `link_to`, a mirror in place is UNCHANGED and
        anything else HAS_LINKS, with nothing done: the daemon knows which names of the inode
        it mirrored, and sends the item again with them. With them, the first whose mirror
        holds this inode's content becomes this name's mirror too; when none does (or no link
        can be made there), a copy is published as for any file."""
        inode = (st.st_dev, st.st_ino)
        if link_to is None:
            tst = self.target.lstat(parts)
            if tst is not None and _holds(tst, st):
                return Outcome(path, Status.UNCHANGED, "file", inode=inode)
            return Outcome(path, Status.HAS_LINKS, "file", inode=inode)
        linked = self._link(parts, path, st, link_to)
        if linked is not None:
            return linked._replace(inode=inode)
        out = self._file(parts, path, busy)
        return out._replace(inode=inode) if out.status in (Status.COPIED, Status.UNCHANGED) else out

    def _link(self, parts: Parts, path: str, st: os.stat_result, link_to: tuple[str, ...]) -> Outcome | None:
        """Make parts' mirror the mirror of one of `link_to`, checked first: that name is
        still this inode in the source, and its mirror is a regular file with this inode's
        size, mtime and mode (never a link to content the source no longer has). None when
        no candidate passes or the target cannot link (then the caller copies)."""
        tst = self.target.lstat(parts)
        for other in link_to:
            oparts = other.split("/")
            if other == path or is_reserved(oparts[-1]):
                continue
            sst = self.source.lstat(oparts)
            if sst is None or (sst.st_dev, sst.st_ino) != (st.st_dev, st.st_ino):
                continue
            ost = self.target.lstat(oparts)
            if ost is None or not _holds(ost, st):
                continue
            if tst is not None and (tst.st_dev, tst.st_ino) == (ost.st_dev, ost.st_ino):
                return Outcome(path, Status.UNCHANGED, "file")
            try:
                self.target.publish_link(oparts, parts, self.source.dir_stat, tst)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOENT):
                    return None  # a file system without links, a full link count, a mirror gone meanwhile
                raise
            return Outcome(path, Status.COPIED, "file", linked_to=other)
        return None

    def _symlink(self, parts: Parts, path: str, st: os.stat_result) -> Outcome:
        try:
            link = os.readlink(parts[-1], dir_fd=self.source.dir(parts[:-1]))
        except (FileNotFoundError, _Gone):
            return self._absent(parts, path)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # no longer a symlink
                return Outcome(path, Status.CHANGED, "symlink")
            raise
        tst = self.target.lstat(parts)
        if tst is not None and stat.S_ISLNK(tst.st_mode) and self.target.readlink(parts) == link:
            if self.keep.owner and not same_owner(tst, st):  # chown -h in the source
                self.target.chown_link(parts, st)
                return Outcome(path, Status.COPIED, "symlink", 0)
            return Outcome(path, Status.UNCHANGED, "symlink")
        attrs: Attrs | None = None
        if self.keep.xattrs and self.keep.privileged:  # a symlink cannot carry user.* nor an ACL
            attrs = read_attrs(at(self.source.dir(parts[:-1]), parts[-1]), self.keep, symlink=True)
        self.target.publish_symlink(parts, link, st, self.source.dir_stat, attrs)
        return Outcome(path, Status.COPIED, "symlink", len(link))

    def rename(self, origin: str, path: str) -> Outcome | None:
        """Replay a rename in the target when the origin's mirror is there to move."""
        oparts, parts = origin.split("/"), path.split("/")
        if is_reserved(oparts[-1]) or is_reserved(parts[-1]):
            return None  # moving ours away, or over ours: sync() skips both names instead
        try:
            sst = self.source.lstat(parts)
            ost = self.target.lstat(oparts)
            if sst is None or ost is None or stat.S_IFMT(sst.st_mode) != stat.S_IFMT(ost.st_mode):
                return None
            moved = self.target.rename(oparts, parts, self.source.dir_stat)
            if moved is None:
                return None
            inode = ((sst.st_dev, sst.st_ino) if self.hardlinks and stat.S_ISREG(sst.st_mode) and sst.st_nlink > 1
                     else None)
            return Outcome(path, Status.RENAMED, kind(moved), renamed_from=origin, inode=inode)
        except OSError as exc:
            return Outcome(path, Status.FAILED, error=f"rename from {origin}: {describe(exc)}", errno=exc.errno or 0)


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _holds(tst: os.stat_result, st: os.stat_result) -> bool:
    """The mirror `tst` holds what the source `st` holds, as the comparison judges it."""
    return (stat.S_ISREG(tst.st_mode) and tst.st_size == st.st_size and tst.st_mtime_ns == st.st_mtime_ns
            and stat.S_IMODE(tst.st_mode) == stat.S_IMODE(st.st_mode))


def _grew_only(sfd: int, tfd: int, before: os.stat_result, after: os.stat_result, copied: int) -> bool:
    """True when a file that changed during its copy looks appended to, not rewritten.

    It grew, the copy holds at least the bytes it had at the first fstat, and the last
    _GROWTH_CHECK bytes of that prefix in the copy still match the source. A rewrite in
    place that leaves exactly those bytes alone is not caught.
    """
    size = before.st_size
    if after.st_size <= size or copied < size:
        return False
    start = max(0, size - _GROWTH_CHECK)
    return os.pread(sfd, size - start, start) == os.pread(tfd, size - start, start)


def _same_inode(sdir: int, name: str, st: os.stat_result) -> bool:
    now = _lstat(sdir, name)
    return now is not None and now.st_ino == st.st_ino and now.st_dev == st.st_dev


def _copy_data(sfd: int, tfd: int, size: int, pause: float = 0.0) -> int:
    """Copy in the kernel: copy_file_range, then sendfile, then read/write as fallbacks.

    Stops once `size` bytes (the size at the stat) are copied, sparing a small file its
    second system call; the caller's stat after the copy catches a file that grew.
    `pause` (test-only fault injection) copies 1 MiB at a time with a sleep in between.
    """
    total = 0
    chunk = (1 << 20) if pause else _CHUNK
    try:
        while True:
            n = os.copy_file_range(sfd, tfd, chunk)
            if n == 0:
                return total
            total += n
            if total >= size:
                return total
            if pause:
                time.sleep(pause)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM) or total:
            raise
    try:
        while True:
            n = os.sendfile(tfd, sfd, None, _CHUNK)
            if n == 0:
                return total
            total += n
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS) or total:
            raise
    while True:
        buf = os.read(sfd, 1 << 20)
        if not buf:
            return total
        view = memoryview(buf)
        while view:
            view = view[os.write(tfd, view):]
        total += len(buf)


def kind(mode: int) -> str:
    """The `kind` of an outcome for a file mode."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "unknown"


def describe(exc: OSError) -> str:
    """An OSError as an operator reads it: its text and errno name."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text
