"""What runs in the pool's workers: mirror one path atomically, or delete it.

Standard library only: a worker imports this module and nothing else of ours (bar the
stdlib-only, test-only `faults`). Every path
component is opened relative to a directory fd with O_NOFOLLOW, so a source folder
swapped for a symlink mid-copy cannot lead a worker out of the source tree. Every
operation is idempotent: a resubmitted batch re-checks and converges.
"""

from __future__ import annotations

import errno
import os
import random
import select
import shutil
import signal
import stat
import threading
import time
from typing import Any

from foldermirror import faults

TEMP_PREFIX = ".foldermirror-"
TEMP_SUFFIX = ".tmp"
# The target lock (targetlock.py). Reserved at every depth, like temp names: it is never
# copied from a source, nor deleted, replaced or moved in a target.
LOCK_NAME = ".foldermirror.lock"
RESERVED_REASON = f"the name {LOCK_NAME} is reserved for foldermirror's lock file"
_CHUNK = 1 << 30
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# (path, status, kind, bytes, error, errno)
Outcome = tuple[str, str, str, int, str, int]
# (st_dev, st_ino) of a source root as the service last saw it
RootId = tuple[int, int]
# (index, source_root, target_root, path, origin, delete, durable, root_id, busy)
WorkItem = tuple[int, str, str, str, "str | None", bool, bool, "RootId | None", bool]

_results: Any = None
_instance = "0"
_IS_ROOT = os.geteuid() == 0
# Directory fds kept per side within one batch; a batch is short (BATCH_MAX items), so a
# directory renamed meanwhile is caught by the comparison its move event triggers.
_DIR_CACHE_MAX = 128


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


def temp_owner(name: str) -> tuple[str, int]:
    """(daemon instance, worker pid) of a temp file; ("", 0) for a name not of that form."""
    parts = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return ("", 0)
    return (parts[0], int(parts[1]))


def _on_term(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # unwinds the copy so its temp file is removed


def init_worker(results: Any, instance: str, daemon_pid: int = 0) -> None:
    """Pool initializer. It must never raise: a failing initializer respawns forever."""
    global _results, _instance
    try:
        _results = results
        _instance = instance
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
        signal.signal(signal.SIGTERM, _on_term)
        _die_with_parent(daemon_pid)
        results.put(("hello", os.getpid()))
    except BaseException:  # noqa: BLE001 - see docstring
        pass


def _die_with_parent(daemon_pid: int) -> None:
    """SIGTERM this worker (its copy unwinds, its temp file goes) when the daemon is gone.

    Without it a worker orphaned by a SIGKILLed daemon finishes its copy and publishes it
    while a restarted daemon is already mirroring the same path. PR_SET_PDEATHSIG does not
    help: a worker's parent is the fork server, which every worker keeps alive.
    """
    if daemon_pid:
        threading.Thread(target=_watch_daemon, args=(daemon_pid,), name="watch-daemon", daemon=True).start()


def _watch_daemon(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while _alive(pid):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])
    os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


RESULTS_FLUSH_ITEMS = 32
RESULTS_FLUSH_NS = 5_000_000


def run_batch(generation: int, task_id: int, items: list[WorkItem]) -> None:
    """Mirror each item and report ("results", …) messages of (index, outcomes, duration).

    Results go out in groups (every RESULTS_FLUSH_ITEMS items or 5 ms, and at the end):
    one queue message per small file would cost more than its copy. A worker that dies
    takes its unsent results with it; those items are resubmitted and find nothing to do.
    """
    pid = os.getpid()
    _results.put(("start", generation, task_id, pid))
    roots = _Roots()
    pending: list[tuple[int, list[Outcome], int]] = []
    last_flush = time.monotonic_ns()
    try:
        for index, source, target, path, origin, delete, durable, root_id, busy in items:
            started = time.monotonic_ns()
            try:
                outcomes = roots.mirror(source, target, path, origin, delete, durable, root_id, busy)
            except Exception as exc:  # noqa: BLE001 - a bug must cost one file, not the batch
                outcomes = [(path, "failed", "unknown", 0, f"internal error: {exc!r}", 0)]
            now = time.monotonic_ns()
            pending.append((index, outcomes, now - started))
            if len(pending) >= RESULTS_FLUSH_ITEMS or now - last_flush >= RESULTS_FLUSH_NS:
                _results.put(("results", generation, task_id, pending, pid))
                pending, last_flush = [], now
    finally:
        roots.close()
    if pending:
        _results.put(("results", generation, task_id, pending, pid))


class _Roots:
    """The source and target roots of one batch, opened once per folder, with their
    directory fds cached for the batch (most files of a burst share a few parents)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, Any], tuple[int, int] | list[Outcome]] = {}
        self._mirrors: dict[tuple[Any, bool, bool], _Mirror] = {}

    def mirror(self, source: str, target: str, path: str, origin: str | None, delete: bool, durable: bool,
               root_id: RootId | None, busy: bool = False) -> list[Outcome]:
        key = (source, target, tuple(root_id) if root_id is not None else None)
        fds = self._open.get(key)
        if fds is None:
            fds = self._open[key] = open_roots(source, target, path, root_id)
        if isinstance(fds, list):  # the roots could not be opened: the same answer for every path
            return [(path, *outcome[1:]) for outcome in fds]
        m = self._mirrors.get((key, delete, durable))
        if m is None:
            m = self._mirrors[(key, delete, durable)] = _Mirror(fds[0], fds[1], delete, durable, _instance)
        return mirror_path(m, path, origin, busy)

    def close(self) -> None:
        for m in self._mirrors.values():
            m.close()
        self._mirrors.clear()
        for fds in self._open.values():
            if isinstance(fds, tuple):
                os.close(fds[0])
                os.close(fds[1])
        self._open.clear()


def open_roots(source: str, target: str, path: str, root_id: RootId | None) -> tuple[int, int] | list[Outcome]:
    """(source fd, target fd), or the outcome for a path when the roots cannot be used.

    When the source root is gone, unreadable, or no longer the directory the service
    watches (`root_id`: an unmounted source shows the empty folder beneath), nothing is
    touched and the outcome is "root_changed": the service re-checks the root and
    compares the whole folder once it is back, under the mass-delete guard.
    """
    try:
        sroot = os.open(source, _ROOT_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ESTALE, errno.EIO):
            return [(path, "root_changed", "unknown", 0, f"source folder {source}: {exc.strerror}", exc.errno)]
        return [(path, "failed", "unknown", 0, f"source folder {source}: {exc.strerror}", exc.errno)]
    if root_id is not None:
        st = os.fstat(sroot)
        if (st.st_dev, st.st_ino) != tuple(root_id):
            os.close(sroot)
            return [(path, "root_changed", "unknown", 0, f"source folder {source} is not the one being watched", 0)]
    try:
        troot = _open_target_root(target)
    except OSError as exc:
        os.close(sroot)
        return [(path, "failed", "unknown", 0, f"target folder {target}: {exc.strerror}", exc.errno)]
    return sroot, troot


def mirror_path(m: "_Mirror", path: str, origin: str | None, busy: bool = False) -> list[Outcome]:
    m.trim()
    m.made.clear()
    out: list[Outcome] = []
    if origin is not None and m.delete:
        renamed = m.rename_in_target(origin, path)
        if renamed is not None:
            out.append(renamed)
        checked = m.sync(origin)
        if checked[1] not in ("unchanged", "gone"):
            out.append(checked)
    result = m.sync(path, busy)
    # Directories made on the way (the parents of a file) are mirrored too: say so first.
    made: list[Outcome] = [(p, "copied", "dir", 0, "", 0) for p in m.made]
    if out and out[0][1] == "renamed" and result[1] == "unchanged":
        return made + out
    return made + out + [result]


def _open_target_root(target: str) -> int:
    try:
        return os.open(target, _ROOT_FLAGS)
    except FileNotFoundError:
        os.makedirs(target, exist_ok=True)
        return os.open(target, _ROOT_FLAGS)


class _Gone(Exception):
    """A source path component is missing or is not a directory (or is a symlink)."""


class _Mirror:
    def __init__(self, sroot: int, troot: int, delete: bool, durable: bool, instance: str) -> None:
        self.sroot = sroot
        self.troot = troot
        self.delete = delete
        self.durable = durable
        self.instance = instance
        self.is_root = _IS_ROOT
        # parts of a directory path → an open fd of it; the fds belong to these caches
        # (callers never close them) and live until close() or an invalidation.
        self._sdirs: dict[tuple[str, ...], int] = {}
        self._tdirs: dict[tuple[str, ...], int] = {}
        self.made: list[str] = []  # directories this path's operations created, as the parents of others

    def close(self) -> None:
        self.forget_source()
        self.forget_target()

    def trim(self) -> None:
        """Between two paths (never during one: its fds are in use): bound the open fds."""
        if len(self._sdirs) > _DIR_CACHE_MAX:
            self.forget_source()
        if len(self._tdirs) > _DIR_CACHE_MAX:
            self.forget_target()

    def forget_source(self) -> None:
        for fd in self._sdirs.values():
            os.close(fd)
        self._sdirs.clear()

    def forget_target(self, under: tuple[str, ...] = ()) -> None:
        """Drop cached target directories at and below `under` (all by default): they
        were removed or renamed."""
        for key in [k for k in self._tdirs if k[:len(under)] == under]:
            os.close(self._tdirs.pop(key))

    # -- path helpers ----------------------------------------------------------
    def _source_dir(self, parts: list[str]) -> int:
        """An fd of source/parts (owned by the cache: do not close it)."""
        if not parts:
            return self.sroot
        key = tuple(parts)
        fd = self._sdirs.get(key)
        if fd is not None:
            return fd
        parent = self._source_dir(parts[:-1])
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise _Gone() from None
            raise
        self._sdirs[key] = fd
        return fd

    def _target_dir(self, parts: list[str], create: bool) -> int:
        """An fd of target/parts (owned by the cache: do not close it); with `create`,
        missing components are made with the source's modes."""
        if not parts:
            return self.troot
        key = tuple(parts)
        fd = self._tdirs.get(key)
        if fd is not None:
            return fd
        parent = self._target_dir(parts[:-1], create)
        part = parts[-1]
        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if not create or exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            if exc.errno != errno.ENOENT:
                self._remove_conflict(parent, part, key)
            fd = self._make_dir(parent, part, parts)
        self._tdirs[key] = fd
        return fd

    def _make_dir(self, parent: int, name: str, source_parts: list[str]) -> int:
        try:
            sst = os.fstat(self._source_dir(source_parts))
        except _Gone:
            raise OSError(errno.ENOENT, "the source directory vanished during the copy") from None
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            self.made.append("/".join(source_parts))
        except FileExistsError:
            pass
        nfd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        os.fchmod(nfd, stat.S_IMODE(sst.st_mode))
        if self.is_root:
            _chown(nfd, sst)
        return nfd

    def _remove_conflict(self, dfd: int, name: str, key: tuple[str, ...]) -> None:
        """A non-directory stands where the source has a directory, or the other way round."""
        if not self.delete:
            raise OSError(errno.EEXIST, "the target has a different file type here and delete: false keeps it")
        self._remove_target(dfd, name, key)

    def _remove_target(self, dfd: int, name: str, key: tuple[str, ...]) -> None:
        self.forget_target(key)
        _remove(dfd, name)

    # -- operations ------------------------------------------------------------
    def sync(self, path: str, busy: bool = False) -> Outcome:
        """Mirror one path. `busy`: it has been changing for a while; a file that only grew
        during its copy is published as it was when the copy began (see _file)."""
        parts = path.split("/")
        parents, name = parts[:-1], parts[-1]
        if is_reserved(name):  # copied, or deleted with delete: true, it would clobber ours
            return (path, "skipped", self._source_kind(parents, name), 0, RESERVED_REASON, 0)
        try:
            try:
                sdir = self._source_dir(parents)
            except _Gone:
                return self._absent(parents, name, path)
            try:
                st = os.stat(name, dir_fd=sdir, follow_symlinks=False)
            except FileNotFoundError:
                return self._absent(parents, name, path)
            if stat.S_ISREG(st.st_mode):
                return self._file(sdir, parents, name, path, busy)
            if stat.S_ISLNK(st.st_mode):
                return self._symlink(sdir, parents, name, path, st)
            if stat.S_ISDIR(st.st_mode):
                return self._dir(sdir, parents, name, path, st)
            return self._special(sdir, parents, name, path, st)
        except FileNotFoundError:
            # Something on the way vanished under us (a concurrent deletion, in the source or
            # by another worker in the target): look again once the path has settled.
            return (path, "changed", "unknown", 0, "", 0)
        except OSError as exc:
            return (path, "failed", "unknown", 0, _describe(exc), exc.errno or 0)

    def _source_kind(self, parents: list[str], name: str) -> str:
        try:
            return _kind(os.stat(name, dir_fd=self._source_dir(parents), follow_symlinks=False).st_mode)
        except (_Gone, OSError):
            return "unknown"

    def _special(self, sdir: int, parents: list[str], name: str, path: str, st: os.stat_result) -> Outcome:
        """A FIFO, socket or device is not mirrored; with delete, a stale mirror of what
        used to be a regular file at this path goes."""
        if self.delete:
            self._absent(parents, name, path)
        return (path, "skipped", _kind(st.st_mode), 0, "not a regular file, directory or symlink", 0)

    def _absent(self, parents: list[str], name: str, path: str) -> Outcome:
        if not self.delete:
            return (path, "gone", "unknown", 0, "", 0)
        try:
            tdir = self._target_dir(parents, False)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return (path, "gone", "unknown", 0, "", 0)
            raise
        try:
            tst = os.stat(name, dir_fd=tdir, follow_symlinks=False)
        except FileNotFoundError:
            return (path, "gone", "unknown", 0, "", 0)
        self._remove_target(tdir, name, (*parents, name))
        return (path, "deleted", _kind(tst.st_mode), 0, "", 0)

    def _file(self, sdir: int, parents: list[str], name: str, path: str, busy: bool = False) -> Outcome:
        try:
            # O_NONBLOCK: a FIFO swapped in after the stat must not block this worker.
            sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sdir)
        except FileNotFoundError:
            return self._absent(parents, name, path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a symlink since the stat
                return (path, "changed", "file", 0, "", 0)
            raise
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                return (path, "changed", "file", 0, "", 0)
            mode = stat.S_IMODE(st.st_mode)
            tdir = self._target_dir(parents, True)
            tst = _lstat(tdir, name)
            if (tst is not None and stat.S_ISREG(tst.st_mode) and tst.st_size == st.st_size
                    and tst.st_mtime_ns == st.st_mtime_ns and stat.S_IMODE(tst.st_mode) == mode):
                return (path, "unchanged", "file", 0, "", 0)
            tmp = temp_name(self.instance)
            # O_RDWR: a busy file's copy is read back (_grew_only).
            tfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tdir)
            published = False
            try:
                pause = faults.delay("slow_copy", path) if faults.ENABLED else 0.0
                copied = _copy_data(sfd, tfd, st.st_size, pause)
                if self.is_root:
                    _chown(tfd, st)
                os.fchmod(tfd, mode)
                os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                after = os.fstat(sfd)
                # ctime too: a same-size rewrite whose mtime was put back (touch -r, cp -p).
                if (copied != after.st_size or after.st_size != st.st_size
                        or after.st_mtime_ns != st.st_mtime_ns or after.st_ctime_ns != st.st_ctime_ns
                        or not _same_inode(sdir, name, st)):
                    if not (busy and _grew_only(sfd, tfd, st, after, copied) and _same_inode(sdir, name, st)):
                        return (path, "changed", "file", 0, "", 0)
                    # Appended to during the copy: its first st_size bytes are the file as
                    # it was at the first fstat, so publish exactly those, with that mtime.
                    # The mirror then differs from the source by size and mtime, and the
                    # next copy (at the next max_delay, or once quiet) brings the rest.
                    os.ftruncate(tfd, st.st_size)
                    os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    copied = st.st_size
                if self.durable:
                    os.fsync(tfd)
                os.close(tfd)
                tfd = -1
                if tst is not None and stat.S_ISDIR(tst.st_mode):
                    self._remove_conflict(tdir, name, (*parents, name))
                os.rename(tmp, name, src_dir_fd=tdir, dst_dir_fd=tdir)
                published = True
                if self.durable:
                    os.fsync(tdir)
                return (path, "copied", "file", copied, "", 0)
            finally:
                if tfd >= 0:
                    os.close(tfd)
                if not published:
                    _unlink_quietly(tdir, tmp)
        finally:
            os.close(sfd)

    def _symlink(self, sdir: int, parents: list[str], name: str, path: str, st: os.stat_result) -> Outcome:
        try:
            link = os.readlink(name, dir_fd=sdir)
        except FileNotFoundError:
            return self._absent(parents, name, path)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # no longer a symlink
                return (path, "changed", "symlink", 0, "", 0)
            raise
        tdir = self._target_dir(parents, True)
        tst = _lstat(tdir, name)
        if tst is not None and stat.S_ISLNK(tst.st_mode) and os.readlink(name, dir_fd=tdir) == link:
            return (path, "unchanged", "symlink", 0, "", 0)
        tmp = temp_name(self.instance)
        os.symlink(link, tmp, dir_fd=tdir)
        try:
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=tdir, follow_symlinks=False)
            if self.is_root:
                try:
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=tdir, follow_symlinks=False)
                except OSError:
                    pass
            if tst is not None and stat.S_ISDIR(tst.st_mode):
                self._remove_conflict(tdir, name, (*parents, name))
            os.rename(tmp, name, src_dir_fd=tdir, dst_dir_fd=tdir)
        except BaseException:
            _unlink_quietly(tdir, tmp)
            raise
        return (path, "copied", "symlink", len(link), "", 0)

    def _dir(self, sdir: int, parents: list[str], name: str, path: str, st: os.stat_result) -> Outcome:
        tdir = self._target_dir(parents, True)
        mode = stat.S_IMODE(st.st_mode)
        tst = _lstat(tdir, name)
        if tst is not None and stat.S_ISDIR(tst.st_mode):
            if stat.S_IMODE(tst.st_mode) == mode:
                return (path, "unchanged", "dir", 0, "", 0)
            os.chmod(name, mode, dir_fd=tdir, follow_symlinks=True)
            return (path, "copied", "dir", 0, "", 0)
        if tst is not None:
            self._remove_conflict(tdir, name, (*parents, name))
        try:
            os.mkdir(name, 0o700, dir_fd=tdir)
        except FileExistsError:
            # Another worker made it, for a file inside it, since the lstat above; that
            # worker reports it.
            now = os.stat(name, dir_fd=tdir, follow_symlinks=False)
            if not stat.S_ISDIR(now.st_mode):
                raise
            if stat.S_IMODE(now.st_mode) == mode:
                return (path, "unchanged", "dir", 0, "", 0)
        os.chmod(name, mode, dir_fd=tdir)
        if self.is_root:
            try:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=tdir, follow_symlinks=False)
            except OSError:
                pass
        return (path, "copied", "dir", 0, "", 0)

    def rename_in_target(self, origin: str, path: str) -> Outcome | None:
        """Replay a rename in the target when the origin's mirror is there to move."""
        oparts, parts = origin.split("/"), path.split("/")
        if is_reserved(oparts[-1]) or is_reserved(parts[-1]):
            return None  # moving ours away, or over ours: sync() skips both names instead
        try:
            try:
                odir = self._target_dir(oparts[:-1], False)
            except OSError:
                return None
            ost = _lstat(odir, oparts[-1])
            if ost is None:
                return None
            try:
                sdir = self._source_dir(parts[:-1])
            except _Gone:
                return None
            sst = _lstat(sdir, parts[-1])
            if sst is None or stat.S_IFMT(sst.st_mode) != stat.S_IFMT(ost.st_mode):
                return None
            ddir = self._target_dir(parts[:-1], True)
            dst = _lstat(ddir, parts[-1])
            if dst is not None and (stat.S_ISDIR(dst.st_mode) or stat.S_ISDIR(ost.st_mode)):
                return None
            self.forget_target(tuple(oparts))
            os.rename(oparts[-1], parts[-1], src_dir_fd=odir, dst_dir_fd=ddir)
            if self.durable:
                os.fsync(ddir)
                os.fsync(odir)
            return (path, "renamed", _kind(ost.st_mode), 0, origin, 0)
        except OSError as exc:
            return (path, "failed", "unknown", 0, f"rename from {origin}: {_describe(exc)}", exc.errno or 0)


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# Bytes re-read at the end of a busy file's copied prefix to tell an append from a rewrite.
_GROWTH_CHECK = 4096


def _grew_only(sfd: int, tfd: int, before: os.stat_result, after: os.stat_result, copied: int) -> bool:
    """True when a file that changed during its copy looks appended to, not rewritten.

    It grew, the copy holds at least the bytes it had at the first fstat, and the
    last _GROWTH_CHECK bytes of that prefix in the copy still match the source. A rewrite
    in place that leaves exactly those bytes alone is not caught.
    """
    size = before.st_size
    if after.st_size <= size or copied < size:
        return False
    start = max(0, size - _GROWTH_CHECK)
    return os.pread(sfd, size - start, start) == os.pread(tfd, size - start, start)


def _same_inode(sdir: int, name: str, st: os.stat_result) -> bool:
    now = _lstat(sdir, name)
    return now is not None and now.st_ino == st.st_ino and now.st_dev == st.st_dev


def _remove(dfd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _unlink_quietly(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _chown(fd: int, st: os.stat_result) -> None:
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except OSError:
        pass


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


def _kind(mode: int) -> str:
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


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text
