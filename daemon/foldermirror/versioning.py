"""Versions in the main process: retention (pure), counts, the background pruner, and what
the `versions` and `restore` commands do. The layout and the worker side are in
pipeline/versions.py.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from foldermirror.config import VersionsConfig
from foldermirror.errors import FoldermirrorError
from foldermirror.folderstate import FolderState
from foldermirror.pipeline.records import Kept
from foldermirror.pipeline.versions import Version, split_entry, split_version, walk
from foldermirror.tempnames import remove_own, temp_name

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
WEEK_NS = 7 * DAY_NS
# Staggered: (up to this age, one version per bucket of this size); younger than the first, all are kept.
STAGGER = ((DAY_NS, HOUR_NS), (30 * DAY_NS, DAY_NS))
PRUNE_INTERVAL = 3600.0   # seconds between two passes over a folder's area (and one at start)
PRUNE_BUDGET = 2000       # area entries looked at per main-loop tick while a pass runs


# -- retention: which versions of one path go (pure) -------------------------------------------
def to_prune(policy: VersionsConfig, times: Iterable[int], now_ns: int) -> set[int]:
    """The times (ns) among one path's versions that `policy` prunes at `now_ns`."""
    newest_first = sorted(set(times), reverse=True)
    max_age = int(policy.max_age * 1e9)
    out = {t for t in newest_first if max_age and now_ns - t > max_age}
    alive = [t for t in newest_first if t not in out]
    if policy.keep == "count":
        out.update(alive[policy.count:])
    elif policy.keep == "staggered":
        seen: set[tuple[int, int]] = set()
        for t in alive:  # newest first: the newest of each bucket is the one kept
            age = now_ns - t
            if age < HOUR_NS:
                continue
            step = next((size for limit, size in STAGGER if age < limit), WEEK_NS)
            bucket = (step, t // step)
            if bucket in seen:
                out.add(t)
            seen.add(bucket)
    return out


# -- counts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionsView:
    count: int
    bytes: int
    oldest_ns: int | None
    counted: bool          # a whole pass over the area has ended (until then: what was kept since start)


class _Tally:
    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.oldest: int | None = None

    def add(self, count: int, size: int, ns: int) -> None:
        self.count += count
        self.bytes += size
        self.oldest = ns if self.oldest is None else min(self.oldest, ns)


class VersionCounts:
    """A folder's versions count, bytes and oldest, kept up to date without walking the area on
    every `status`: the last pass's survivors, plus what was kept since that pass began (the pass
    leaves versions newer than its start to this count), minus what the running pass pruned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: _Tally | None = None
        self._since_last = _Tally()
        self._since_this = _Tally()
        self._pruned = _Tally()

    def kept(self, kept: Kept, ns: int) -> None:
        with self._lock:
            self._since_last.add(kept.files + kept.dirs, kept.bytes, ns)
            self._since_this.add(kept.files + kept.dirs, kept.bytes, ns)

    def pass_started(self) -> None:
        with self._lock:
            self._since_this = _Tally()
            self._pruned = _Tally()

    def pruned(self, count: int, size: int) -> None:
        with self._lock:
            self._pruned.add(count, size, 0)

    def pass_ended(self, survivors: _Tally) -> None:
        with self._lock:
            self._base = survivors
            self._since_last, self._since_this = self._since_this, _Tally()
            self._pruned = _Tally()

    def view(self) -> VersionsView:
        with self._lock:
            base = self._base or _Tally()
            pruned = self._pruned if self._base is not None else _Tally()
            oldest = [t for t in (base.oldest, self._since_last.oldest) if t is not None]
            return VersionsView(max(0, base.count + self._since_last.count - pruned.count),
                                max(0, base.bytes + self._since_last.bytes - pruned.bytes),
                                min(oldest) if oldest else None, self._base is not None)


# -- the pruner --------------------------------------------------------------------------------
class _Pass:
    """One walk over one folder's area, a directory at a time."""

    def __init__(self, folder: str, area: str, policy: VersionsConfig, now_ns: int) -> None:
        self.folder = folder
        self.area = area
        self.policy = policy
        self.now_ns = now_ns
        self.stack = [""]
        self.survivors = _Tally()
        self.pruned = 0
        self.pruned_bytes = 0
        self.errors = 0

    def step(self, counts: VersionCounts) -> int:
        """One directory; returns the entries it looked at."""
        rel = self.stack.pop()
        path = os.path.join(self.area, rel) if rel else self.area
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            return 1
        groups: dict[str, list[tuple[int, os.DirEntry[str]]]] = {}
        removed = 0
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                self.stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                continue
            parsed = split_entry(rel, entry.name)
            if parsed is None or parsed.ns >= self.now_ns:  # not ours, or kept since the pass began
                continue
            groups.setdefault(parsed.path, []).append((parsed.ns, entry))
        for versions in groups.values():
            doomed = to_prune(self.policy, (t for t, _ in versions), self.now_ns)
            for t, entry in versions:
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if t in doomed:
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        self.errors += 1
                        self.survivors.add(1, size, t)
                        continue
                    self.pruned += 1
                    removed += 1
                    self.pruned_bytes += size
                    counts.pruned(1, size)
                else:
                    self.survivors.add(1, size, t)
        if rel and removed == len(entries):
            _rmdir_quietly(path)  # emptied by this step (a directory kept by a later version fails: not empty)
        return len(entries) + 1


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


class Pruner:
    """Prunes every folder's area in the background of the main loop: a pass at start and every
    PRUNE_INTERVAL, PRUNE_BUDGET entries per tick; one `versions_pruned` line per folder and pass
    that pruned anything. Idle between passes (its deadline is the next pass)."""

    def __init__(self, *, log: Any, folders: Mapping[str, FolderState],
                 wall_ns: Callable[[], int] = time.time_ns, interval: float = PRUNE_INTERVAL,
                 budget: int = PRUNE_BUDGET, remote_spec: Callable[[Any], Any] = lambda f: None) -> None:
        self.log = log
        # A remote folder's spec through its host's masters (None or no socket: its link is down).
        self.remote_spec = remote_spec
        self._remote_running: set[str] = set()
        self._remote_waiting: set[str] = set()  # due while their link was down: started once it is up
        self.folders = folders
        self.wall_ns = wall_ns
        self.interval = interval
        self.budget = budget
        self.counts: dict[str, VersionCounts] = {}
        self._passes: list[_Pass] = []
        self._next: float = 0.0  # monotonic time of the next pass; 0: at the first tick

    def counts_of(self, folder: str) -> VersionCounts:
        c = self.counts.get(folder)
        if c is None:
            c = self.counts.setdefault(folder, VersionCounts())
        return c

    def view(self, folder: str) -> VersionsView:
        return self.counts_of(folder).view()

    def on_kept(self, folder: str, kept: Kept) -> None:
        """The recorder's: a worker kept a version (or a directory's files)."""
        self.counts_of(folder).kept(kept, self.wall_ns())

    def active(self) -> bool:
        return bool(self._passes)

    def deadline(self) -> float | None:
        if not any(s.config.versions is not None for s in self.folders.values()):
            return None
        return self._next

    def soon(self) -> None:
        """A folder with versions was added (start, reload): pass at the next tick."""
        self._next = 0.0

    def tick(self, now: float) -> None:
        if not self._passes and now >= self._next:
            self._start(now)
        for name in list(self._remote_waiting):  # a link came up since (a tick follows remote_up)
            state = self.folders.get(name)
            area = state.config.versions_area if state is not None else None
            if state is None or state.config.versions is None or area is None:
                self._remote_waiting.discard(name)
            else:
                self._start_remote(name, state.config, area, self.wall_ns())
        budget = self.budget
        while self._passes and budget > 0:
            p = self._passes[0]
            if not p.stack:
                self._end(self._passes.pop(0))
                continue
            budget -= p.step(self.counts_of(p.folder))

    def _start(self, now: float) -> None:
        self._next = now + self.interval
        wall = self.wall_ns()
        for name, state in list(self.folders.items()):
            f = state.config
            area = f.versions_area
            if f.versions is None or area is None:
                continue
            if f.remote is not None:
                self._start_remote(name, f, area, wall)
                continue
            self.counts_of(name).pass_started()
            self._passes.append(_Pass(name, area, f.versions, wall))

    def _start_remote(self, name: str, f: Any, area: str, wall: int) -> None:
        """A remote area's pass is a listing and one removal call, each waiting on the host: in a
        thread of its own that ends with the pass (none runs between passes)."""
        spec = self.remote_spec(f)
        if name in self._remote_running:
            return
        if spec is None or any("/nonexistent" in " ".join(a) for a in spec.ssh):
            self._remote_waiting.add(name)  # the link is down: once it is up
            return
        self._remote_waiting.discard(name)
        self._remote_running.add(name)
        self.counts_of(name).pass_started()
        threading.Thread(target=self._remote_pass, args=(name, spec, area, f.versions, wall), daemon=True,
                         name=f"prune-{name}").start()

    def _remote_pass(self, name: str, spec: Any, area: str, policy: VersionsConfig, wall: int) -> None:
        counts = self.counts_of(name)
        try:
            pruned, size, survivors = remote_prune(spec, area, policy, wall, name, counts)
        except Exception as exc:  # noqa: BLE001 - a host that fails the pass is tried again at the next
            self.log.warning("versions_prune_failed", folder=name, versions=0, area=area, error=str(exc),
                             fix="check the host and the versions area there; the next pass tries again")
        else:
            counts.pass_ended(survivors)
            if pruned:
                self.log.info("versions_pruned", folder=name, versions=pruned, bytes=size, kept=survivors.count,
                              keep=policy.keep)
        finally:
            self._remote_running.discard(name)

    def _end(self, p: _Pass) -> None:
        if p.folder in self.folders:
            self.counts_of(p.folder).pass_ended(p.survivors)
        if p.pruned:
            self.log.info("versions_pruned", folder=p.folder, versions=p.pruned, bytes=p.pruned_bytes,
                          kept=p.survivors.count, keep=p.policy.keep)
        if p.errors:
            self.log.warning("versions_prune_failed", folder=p.folder, versions=p.errors, area=p.area,
                             error="some versions could not be removed",
                             fix=f"give the service user (uid {os.geteuid()}) write access to {p.area}")


# -- the commands ------------------------------------------------------------------------------
class RestoreError(FoldermirrorError):
    """A version cannot be restored (none there, or a newer file stands in the way)."""


def listing(area: str, path: str) -> list[Version]:
    """The versions of `path` (a file, or everything under a directory; "" or "." the whole folder), newest first."""
    under = path.strip("/")
    under = "" if under == "." else under
    return sorted(walk(area, under), key=lambda v: (v.ns, v.path), reverse=True)


def parse_time(text: str) -> int:
    """--at: a version's stamp (20261201T141643.123456Z), or an ISO 8601 time (UTC unless it says otherwise)."""
    from datetime import UTC, datetime

    from foldermirror.pipeline.versions import parse_stamp

    ns = parse_stamp(text)
    if ns is not None:
        return ns
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"--at {text}: expected a time such as 2026-12-01T14:16:43Z or a version's stamp "
                           "(20261201T141643.123456Z, as `versions` lists it)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e9)


def choose(versions: list[Version], at_ns: int | None) -> dict[str, Version]:
    """Per path, the version to restore: the newest; with `at_ns`, the one that was in the mirror
    then (the first kept at or after that time: it was replaced or deleted later)."""
    out: dict[str, Version] = {}
    for v in sorted(versions, key=lambda v: v.ns):
        if at_ns is not None:
            if v.ns >= at_ns and v.path not in out:
                out[v.path] = v
        else:
            out[v.path] = v
    return out


class RestorePlan(NamedTuple):
    """What a restore does, in this order: make the directories that are missing (shallowest
    first), write the files and symlinks, then give the directories made their owner, mode
    and mtime (deepest first, `reversed(dirs)`)."""

    dirs: list[Version]    # directories' versions, shallowest first
    files: list[Version]   # files' and symlinks', by path


def restore_plan(chosen: Mapping[str, Version]) -> RestorePlan:
    """The chosen versions (`choose`) in the order a restore takes them."""
    dirs = sorted((v for v in chosen.values() if v.kind == "dir"), key=lambda v: (v.path.count("/"), v.path))
    files = sorted((v for v in chosen.values() if v.kind != "dir"), key=lambda v: v.path)
    return RestorePlan(dirs, files)


def make_dir(v: Version, dest_root: str) -> bool:
    """Make dest_root/v.path for a directory's version, private until `settle_dir` (the files
    under it go in first); False when a directory is there already, which is left as it is.
    Never over anything else."""
    dest = os.path.join(dest_root, v.path)
    try:
        now = os.lstat(dest)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.mkdir(dest, 0o700)
        return True
    if not stat.S_ISDIR(now.st_mode):
        raise RestoreError(f"{dest} is not a directory; move it away to restore the directory")
    return False


def settle_dir(area: str, v: Version, dest_root: str) -> str:
    """Give the directory dest_root/v.path its version's owner (as root), mode and mtime; returns
    its path. Called deepest first, once the files are in: each file renamed into a directory
    changes its mtime, and a parent's mode may bar the way to its children."""
    st = os.lstat(os.path.join(area, v.name))
    dest = os.path.join(dest_root, v.path)
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _give(fd, st)
    finally:
        os.close(fd)
    return dest


def _give(fd: int, st: os.stat_result) -> None:
    """The open entry `fd` takes `st`'s owner (as root), mode and mtime."""
    if os.geteuid() == 0:
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            pass
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _restore_temp(dest: str, v: Version, force: bool) -> str:
    """The temp path beside `dest` that version `v` is written to before its rename into place,
    once it is sure it may go there: not over a directory, nor over a file changed after the
    version was kept (unless `force`). Makes dest's parent directories."""
    try:
        now = os.lstat(dest)
    except FileNotFoundError:
        now = None
    if now is not None and stat.S_ISDIR(now.st_mode):
        raise RestoreError(f"{dest} is a directory; restore the files under it, or move it away")
    if now is not None and now.st_mtime_ns > v.ns and not force:
        raise RestoreError(f"{dest} was changed after this version was kept ({v.time}); give --force to "
                           "replace it anyway")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, temp_name("restore"))
    return tmp


def restore_one(area: str, v: Version, dest_root: str, *, force: bool) -> str:
    """Write version `v` back to dest_root/v.path atomically (temp + rename, its mode and mtime);
    returns what was done. Never over a file changed after the version was kept, unless `force`."""
    src = os.path.join(area, v.name)
    dest = os.path.join(dest_root, v.path)
    st = os.lstat(src)
    tmp = _restore_temp(dest, v, force)
    try:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), tmp)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        else:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                fd = fout.fileno()
                os.fchmod(fd, 0o600)
                _copy(fin.fileno(), fd, st.st_size)
                _give(fd, st)
                os.fsync(fd)
        os.rename(tmp, dest)
    except BaseException:
        remove_own(tmp)
        raise
    return dest


def _copy(sfd: int, dfd: int, size: int) -> None:
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(sfd, dfd, size - copied)
            if n == 0:
                break
            copied += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or copied:
            raise
    while chunk := os.read(sfd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dfd, view):]


# -- the commands on a remote target: a login of their own (as `check`), rsync both ways -----------
def _remote_rsync(f: Any, ssh_config: Any) -> tuple[list[str], Any]:
    from foldermirror.remote.links import remote_spec

    spec = remote_spec(f, ssh_config, sockets=())
    return _rsync_over(spec), spec


def _rsync_over(spec: Any) -> list[str]:
    """rsync through the spec's first ssh command (a master's session, or a login of its own)."""
    import shlex

    return ["rsync", "-s", "-8", "-e", shlex.join(spec.ssh[0]),
            "--rsync-path=" + shlex.join(shlex.split(spec.rsync_path)), f"--timeout={spec.io_timeout}"]


def remote_listing(f: Any, ssh_config: Any, path: str) -> list[Version]:
    """`listing` of a remote folder's area on its host, over a login of its own."""
    from foldermirror.remote.links import remote_spec

    return remote_versions(remote_spec(f, ssh_config, sockets=()), f.versions_area, path, f.name)


def remote_versions(spec: Any, area: str, path: str, folder: str) -> list[Version]:
    """The versions in a remote area at or below `path`, newest first: a dry-run pull of the area
    (or of the directory holding `path`) into an empty folder prints every version with its size."""
    import subprocess
    import tempfile

    from foldermirror.remote import rsync as R

    under = path.strip("/")
    under = "" if under == "." else under
    base = under.rpartition("/")[0] if under else ""
    cmd = _rsync_over(spec)
    with tempfile.TemporaryDirectory(prefix="foldermirror-versions-") as empty:
        src = os.path.join(area, base).rstrip("/") + "/"
        run = subprocess.run([*cmd, "-rlptn", "--out-format=%l/%i/%n", "--", R.dest(spec.host, src, spec.user),
                              empty + "/"], capture_output=True, check=False, timeout=spec.io_timeout + 30,
                             stdin=subprocess.DEVNULL)
    if run.returncode not in (0, 23, 24):
        raise FoldermirrorError(f"folder {folder}: cannot list {area} on {spec.host}: rsync exit {run.returncode}: "
                                f"{run.stderr.decode(errors='replace').strip()}")
    out: list[Version] = []
    for raw in run.stdout.splitlines():
        size, _, rest = raw.partition(b"/")
        item, _, name_b = rest.partition(b"/")
        if not size.isdigit() or len(item) < 2 or item[1:2] not in (b"f", b"L"):
            continue
        name = os.fsdecode(R.unescape(name_b))
        rel = f"{base}/{name}" if base else name
        parent, _, leaf = rel.rpartition("/")
        parsed = split_version(leaf)
        if parsed is None:
            continue
        vpath = f"{parent}/{parsed[0]}" if parent else parsed[0]
        if under and vpath != under and not vpath.startswith(under + "/"):
            continue
        out.append(Version(vpath, parsed[1], int(size), "symlink" if item[1:2] == b"L" else "file", rel))
    return sorted(out, key=lambda v: (v.ns, v.path), reverse=True)


def remote_prune(spec: Any, area: str, policy: VersionsConfig, now_ns: int, folder: str,
                 counts: VersionCounts) -> tuple[int, int, _Tally]:
    """One pass over a remote area through the folder's master: list, choose, and remove what the
    policy prunes in one `sh -s` call; (versions pruned, their bytes, the survivors)."""
    import shlex
    import subprocess

    found = [v for v in remote_versions(spec, area, ".", folder) if v.ns < now_ns]
    by_path: dict[str, list[Version]] = {}
    for v in found:
        by_path.setdefault(v.path, []).append(v)
    doomed: list[Version] = []
    survivors = _Tally()
    for versions in by_path.values():
        times = to_prune(policy, (v.ns for v in versions), now_ns)
        for v in versions:
            if v.ns in times:
                doomed.append(v)
            else:
                survivors.add(1, v.size, v.ns)
    if not doomed:
        return 0, 0, survivors
    lines = [f"cd {shlex.quote(area)} || exit 1"]
    for i in range(0, len(doomed), 200):
        lines.append("rm -f -- " + " ".join(shlex.quote("./" + v.name) for v in doomed[i:i + 200]))
    done = subprocess.run([*spec.ssh[0], "--", spec.host, "sh -s"], input=("\n".join(lines) + "\n").encode(),
                          capture_output=True, check=False, timeout=spec.io_timeout + 30)
    if done.returncode != 0:
        raise FoldermirrorError(f"folder {folder}: removing versions in {area} on {spec.host}: exit "
                                f"{done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    size = sum(v.size for v in doomed)
    counts.pruned(len(doomed), size)
    return len(doomed), size, survivors


def restore_remote_one(f: Any, ssh_config: Any, v: Version, dest_root: str, *, force: bool) -> str:
    """`restore_one` from a remote folder's area: rsync pulls the version (bytes, mode, mtime; owner
    as root) into a temp file beside the destination, which is then renamed into place."""
    import subprocess

    from foldermirror.remote import rsync as R

    dest = os.path.join(dest_root, v.path)
    tmp = _restore_temp(dest, v, force)
    cmd, spec = _remote_rsync(f, ssh_config)
    owner = ["-o", "-g"] if os.geteuid() == 0 else []
    try:
        run = subprocess.run([*cmd, "-lpt", *owner, "--", R.dest(spec.host, os.path.join(f.versions_area, v.name),
                                                                spec.user), tmp],
                             capture_output=True, check=False, timeout=spec.io_timeout + 30, stdin=subprocess.DEVNULL)
        if run.returncode != 0:
            raise RestoreError(f"cannot fetch {v.name} from {spec.host}: rsync exit {run.returncode}: "
                               f"{run.stderr.decode(errors='replace').strip()}")
        os.rename(tmp, dest)
    except BaseException:
        remove_own(tmp)
        raise
    return dest
