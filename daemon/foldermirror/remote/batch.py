"""One batch of a remote folder, in a worker: renames, one transfer pass, one delete pass.

Where a local target is driven path by path, a remote one is driven a batch at a time,
since a round trip costs milliseconds: the renames seen live are replayed in one ssh call,
the paths that exist go in one `rsync --files-from` call, the paths that are gone with
--delete-missing-args: in the same call where the remote rsync is 3.4.4 or later, else in
a call per directory (older receivers with the 3.4.3 security fixes, Debian 12's 3.2.7
among them, refuse a whole list in which a missing path follows an existing one). rsync's
own temp file and rename keep each publish atomic.

rsync's per-file lines are trusted only when it exits 0. After a partial run (exit 23/24,
or one cut short) a dry run of the same pass says which paths still differ: those failed,
the others are in place. When the link fails nothing is known: every path comes back as
LINK_DOWN and waits for the link. Standard library only.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
import subprocess
import time
from typing import NamedTuple

from foldermirror import faults
from foldermirror.pipeline.copier import kind
from foldermirror.pipeline.records import FolderSpec, ItemResult, Kept, Outcome, RemoteSpec, Status, WorkItem
from foldermirror.pipeline.versions import version_suffix
from foldermirror.remote import rsync
from foldermirror.tempnames import RESERVED_REASON, is_reserved

# Above rsync's own --timeout: a hung ssh must not hang the worker (rsync's timeout only
# counts while the protocol runs).
HARD_TIMEOUT_MARGIN = 30.0


class _Pass(NamedTuple):
    rc: int
    lines: dict[str, rsync.OutLine]
    errors: dict[str, rsync.FileError]
    stderr: bytes


def mirror_batch(spec: FolderSpec, items: list[WorkItem]) -> list[ItemResult]:
    remote = spec.remote
    assert remote is not None
    started = time.monotonic_ns()
    root_problem = _root_problem(spec)
    if root_problem is not None:
        # Gone, unreadable or another directory (an unmounted disk's mount point): nothing is
        # sent, least of all deletions; the service compares the folder once it is back.
        return [ItemResult(i.position, [Outcome(i.path, Status.ROOT_CHANGED, error=root_problem)], 0)
                for i in items]
    out: dict[int, list[Outcome]] = {}
    send: dict[str, WorkItem] = {}
    gone: dict[str, WorkItem] = {}
    renames: list[tuple[str, str]] = []
    links = _Links()
    for item in items:
        path = item.path
        if any(is_reserved(part) for part in path.split("/")):
            out[item.position] = [Outcome(path, Status.SKIPPED, error=RESERVED_REASON)]
            continue
        # An origin gone from the source goes from the target too, whatever became of the
        # path itself (moved on again, say: a → b → c hands out b with origin a).
        if item.origin is not None and spec.delete and _lstat(spec.source, item.origin) is None:
            gone.setdefault(item.origin, item)
        st = _lstat(spec.source, path)
        if st is None:
            if spec.delete:
                gone[path] = item
            else:
                out[item.position] = [Outcome(path, Status.GONE)]
        elif spec.hardlinks and stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and not links.add(spec, item, st):
            out[item.position] = [Outcome(path, Status.HAS_LINKS, "file", inode=(st.st_dev, st.st_ino))]
        elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            send[path] = item
            if item.origin in gone:
                renames.append((item.origin, path))
        else:
            out[item.position] = [Outcome(path, Status.SKIPPED, kind(st.st_mode),
                                          error="not a regular file, directory or symlink")]
    if faults.ENABLED:
        for path in send:
            if faults.value("vanish") == os.path.basename(path):
                os.unlink(os.path.join(spec.source, path))
    ssh = list(remote.ssh[os.getpid() % len(remote.ssh)])
    renamed = _replay_renames(remote, ssh, renames, spec.versions) if renames else set()
    link_error = None
    sent: dict[str, list[Outcome]] = {}
    deleted: dict[str, list[Outcome]] = {}
    listed = rsync.deletion_list(gone, lambda p: _lstat(spec.source, p) is not None) if gone else []
    # Hard links: rsync -H links only names of one pass, so the other names go along.
    along = [p for p in links.others if p not in send and p not in gone]
    if remote.merged_delete and listed:
        # One pass: this receiver takes existing and missing paths in one list.
        both, link_error = _transfer(spec, remote, ssh, [*send, *along, *listed], rsync.Mode.DELETE,
                                     present={*send, *along})
        sent = {p: o for p, o in both.items() if p in send}
        deleted = {p: o for p, o in both.items() if p not in send and p not in along}
    else:
        if send:
            sent, link_error = _transfer(spec, remote, ssh, [*send, *along], rsync.Mode.TRANSFER,
                                         present={*send, *along})
        # Before 3.4.4 a receiver refuses a whole list in which a missing path follows an
        # existing one, and the sender lists a path's parents first: so a pass per directory,
        # in which every listed path is missing.
        for base, names in rsync.by_directory(listed).items() if link_error is None else ():
            in_dir, link_error = _transfer(spec, remote, ssh, names, rsync.Mode.DELETE, base=base)
            deleted.update(in_dir)
            if link_error is not None:
                break
    duration = time.monotonic_ns() - started
    results = []
    for item in items:
        if item.position in out:
            outcomes = out[item.position]
        elif link_error is not None:
            outcomes = [Outcome(item.path, Status.LINK_DOWN, error=link_error)]
        elif item.path in send:
            outcomes = links.tell(item.path, sent.get(item.path, [Outcome(item.path, Status.UNCHANGED)]))
            if item.origin is not None and (item.origin, item.path) in renamed:
                st = _lstat(spec.source, item.path)
                first = Outcome(item.path, Status.RENAMED, kind(st.st_mode) if st else "unknown",
                                renamed_from=item.origin)
                outcomes = [*outcomes[:-1], first] if outcomes[-1].status is Status.UNCHANGED else [first, *outcomes]
            elif item.origin is not None:
                outcomes = [*deleted.pop(item.origin, []), *outcomes]
        else:
            outcomes = deleted.pop(item.path, [Outcome(item.path, Status.GONE)])
            if item.origin is not None:
                outcomes = [*deleted.pop(item.origin, []), *outcomes]
        results.append(ItemResult(item.position, outcomes, duration))
    if deleted and results:  # entries deleted with a listed directory that no item of this batch names
        results[0].outcomes.extend(o for outs in deleted.values() for o in outs)
    return results


class _Links:
    """Hard links in one remote batch: the multi-linked files sent, and their other names."""

    def __init__(self) -> None:
        self.inodes: dict[str, tuple[int, int]] = {}
        self.first: dict[str, str] = {}    # path → the first other name that goes along
        self.others: dict[str, None] = {}  # the other names sent along, in order

    def add(self, spec: FolderSpec, item: WorkItem, st: os.stat_result) -> bool:
        """A file with other names: False when it has no `link_to` yet (it comes back
        HAS_LINKS); else its other names still of its inode in the source go along."""
        if item.link_to is None:
            return False
        inode = (st.st_dev, st.st_ino)
        self.inodes[item.path] = inode
        for other in item.link_to:
            ost = _lstat(spec.source, other)
            if (other != item.path and ost is not None and (ost.st_dev, ost.st_ino) == inode
                    and not any(is_reserved(part) for part in other.split("/"))):
                self.first.setdefault(item.path, other)
                self.others[other] = None
        return True

    def tell(self, path: str, outcomes: list[Outcome]) -> list[Outcome]:
        """The file's own outcome with its inode, and linked_to when rsync made it a link."""
        inode = self.inodes.get(path)
        if inode is None:
            return outcomes
        last = outcomes[-1]
        if last.path != path or last.status not in (Status.COPIED, Status.UNCHANGED):
            return outcomes
        linked = self.first.get(path, last.linked_to) if last.linked_to is not None else None
        return [*outcomes[:-1], last._replace(inode=inode, linked_to=linked)]


def _transfer(spec: FolderSpec, remote: RemoteSpec, ssh: list[str], names: list[str], mode: rsync.Mode,
              base: str = "", present: set[str] | None = None) -> tuple[dict[str, list[Outcome]], str | None]:
    """One pass over `names` (relative to `base`): the outcomes by folder-relative path
    (parents made on the way lead), or the link's error. `present`: the paths that exist in
    the source (the others, in a delete pass, are gone)."""
    paths = [f"{base}/{n}" if base else n for n in names]
    present = present or set()
    suffix = version_suffix(time.time_ns()) if spec.versions is not None else ""  # one stamp per pass
    run = _run(spec, remote, ssh, names, mode, base, dry_run=False, suffix=suffix)
    kind_ = rsync.classify_run(run.rc, run.stderr)
    if kind_ in (rsync.RsyncExit.LINK, rsync.RsyncExit.UNKNOWN):
        return {}, _why(run)
    if kind_ is rsync.RsyncExit.FATAL_USAGE:
        error = _why(run)
        return {p: [Outcome(p, Status.FAILED, error=error)] for p in paths}, None
    still: dict[str, rsync.OutLine] = {}
    if kind_ is not rsync.RsyncExit.OK:
        check = _run(spec, remote, ssh, names, mode, base, dry_run=True, suffix=suffix)
        if rsync.classify_run(check.rc, check.stderr) in (rsync.RsyncExit.LINK, rsync.RsyncExit.UNKNOWN):
            return {}, _why(check)
        still = check.lines
    out: dict[str, list[Outcome]] = {}
    listed = set(paths)
    blamed = any(p in run.errors and not _vanished(run.errors[p]) for p in paths)
    made = [line for p, line in run.lines.items() if p not in listed and p and p not in still
            and line.kind is rsync.Kind.DIR and line.action is not rsync.Action.DELETED]
    for path in paths:
        line = run.lines.get(path)
        if path in still or (kind_ is not rsync.RsyncExit.OK and path in run.errors):
            err = run.errors.get(path)
            if err is not None and _vanished(err):
                out[path] = [Outcome(path, Status.CHANGED)]
            elif err is None and blamed:
                # The run stopped at another path's error (a full disk aborts it): this one
                # is not at fault and goes again at once, in a batch of its own making.
                out[path] = [Outcome(path, Status.CHANGED, error="not sent: the transfer stopped at another file")]
            else:
                message = (f"{err.message} (rsync's {err.role or 'receiver'}: {err.op})" if err
                           else "rsync did not put it in place: " + _why(run))
                out[path] = [Outcome(path, Status.FAILED, error=message, errno=(err.errno or 0) if err else 0)]
        elif line is None:
            out[path] = [Outcome(path, Status.UNCHANGED if path in present else Status.GONE)]
        elif line.action is rsync.Action.DELETED:
            out[path] = [Outcome(path, Status.DELETED, "dir" if line.kind is rsync.Kind.DIR else "file",
                                 version_kept=_kept(line, suffix))]
        else:
            # A hard link rsync made (-H) says so by linked_to; of which name, the batch knows.
            out[path] = [Outcome(path, Status.COPIED, str(line.kind),
                                 line.size if line.action is rsync.Action.SENT else 0,
                                 version_kept=_kept(line, suffix),
                                 linked_to=path if line.action is rsync.Action.HARDLINK else None)]
    for line in made:  # parents made on the way: reported once, before the first path under them
        first = next((p for p in paths if p.startswith(line.path + "/")), None)
        if first is not None:
            out[first].insert(0, Outcome(line.path, Status.COPIED, "dir"))
    if mode is rsync.Mode.DELETE:
        # A listed directory goes with what is in it: each entry deleted is said once, as the
        # outcome of its own item when the batch has one.
        for p, line in run.lines.items():
            if p not in listed and p not in still and line.action is rsync.Action.DELETED:
                out[p] = [Outcome(p, Status.DELETED, "dir" if line.kind is rsync.Kind.DIR else "file",
                                  version_kept=_kept(line, suffix))]
    return out, None


def _kept(line: rsync.OutLine, suffix: str) -> Kept | None:
    """The version rsync's --backup made of what this line replaced or deleted (its size is not
    known here: rsync does not print the old file's). A directory's files each have their own line."""
    if not suffix or line.kind is rsync.Kind.DIR:
        return None
    if line.action is rsync.Action.DELETED or (line.action in (rsync.Action.SENT, rsync.Action.CREATED)
                                               and not line.new):
        return Kept(line.path + suffix, 1, 0)
    return None


def _vanished(err: rsync.FileError) -> bool:
    """Gone from the source between the listing and the send: looked at again, no failure.
    rsync says "file has vanished", or, before its sender reached the file, link_stat ENOENT."""
    return err.op == "file has vanished" or (err.role == "sender" and err.errno == errno.ENOENT)


def _run(spec: FolderSpec, remote: RemoteSpec, ssh: list[str], names: list[str], mode: rsync.Mode, base: str,
         *, dry_run: bool, suffix: str = "") -> _Pass:
    argv = rsync.argv(mode=mode, source_root=spec.source, host=remote.host, user=remote.user, base=base,
                      remote_root=remote.path, ssh=ssh, rsync_path=shlex.split(remote.rsync_path),
                      delete=spec.delete, dry_run=dry_run, preserve_owner=remote.preserve_owner,
                      keep=remote.keep, hardlinks=spec.hardlinks, fsync=spec.durable, bwlimit=remote.bwlimit, timeout_s=remote.io_timeout,
                      backup_dir=spec.versions if suffix else None, backup_suffix=suffix)
    try:
        done = subprocess.run(argv, input=rsync.files_from(names), capture_output=True, check=False,
                              timeout=remote.io_timeout + HARD_TIMEOUT_MARGIN)
    except subprocess.TimeoutExpired as exc:
        return _Pass(30, {}, {}, (exc.stderr or b"") + b"\nrsync did not finish in time")
    lines: dict[str, rsync.OutLine] = {}
    errors: dict[str, rsync.FileError] = {}
    for raw in done.stdout.split(b"\n"):
        line = rsync.parse_line(raw, base)
        if line is not None:
            lines[line.path] = line
        elif raw:
            _note_error(raw, spec, remote, names, base, errors)
    for raw in done.stderr.split(b"\n"):
        _note_error(raw, spec, remote, names, base, errors)
    return _Pass(done.returncode, lines, errors, done.stderr)


def _note_error(raw: bytes, spec: FolderSpec, remote: RemoteSpec, names: list[str], base: str,
                errors: dict[str, rsync.FileError]) -> None:
    err = rsync.parse_error(raw)
    if err is None:
        return
    path = rsync.folder_path(err, source_root=spec.source, remote_root=remote.path, base=base, listed=names)
    if path is not None:
        errors.setdefault(path, err)


def _why(run: _Pass) -> str:
    return rsync.explain(run.rc, run.stderr)


# A rename, replayed as the local copier would: only when the origin is there and neither
# side is a directory in the way; `mv -T` never moves into a directory of the same name.
_RENAME_SCRIPT = r"""r() { { [ -e "$2" ] || [ -L "$2" ]; } || return 0
if [ -e "$3" ] || [ -L "$3" ]; then
  { [ -d "$3" ] && [ ! -L "$3" ]; } && return 0
  { [ -d "$2" ] && [ ! -L "$2" ]; } && return 0
fi
mkdir -p -- "$(dirname -- "$3")" && mv -fT -- "$2" "$3" && echo "$1"; }"""


# With versions: a file the move lands on is first hard-linked into the area as PATH~STAMP (V, S);
# when that cannot be done the move is not made (the transfer pass, with --backup, converges).
_KEEP_LANDED = r"""k() { { [ -e "$1" ] || [ -L "$1" ]; } || return 0
{ [ -e "$2" ] || [ -L "$2" ]; } || return 0
{ [ -d "$1" ] && [ ! -L "$1" ]; } && return 0
{ [ -d "$2" ] && [ ! -L "$2" ]; } && return 0
mkdir -p -- "$V/$(dirname -- "$2")" && ln -- "$2" "$V/$2$S"; }"""


def _replay_renames(remote: RemoteSpec, ssh: list[str], pairs: list[tuple[str, str]],
                    versions: str | None = None) -> set[tuple[str, str]]:
    """One ssh call for every rename of the batch; the pairs that moved. A rename that fails
    is no error: the transfer and delete passes that follow converge all the same."""
    keep = ""
    if versions is not None:
        keep = (f"V={shlex.quote(versions)}; S={shlex.quote(version_suffix(time.time_ns()))}\n{_KEEP_LANDED}\n")
    calls = [(f"k {shlex.quote('./' + a)} {shlex.quote('./' + b)} && " if versions is not None else "")
             + f"r {i} {shlex.quote('./' + a)} {shlex.quote('./' + b)}" for i, (a, b) in enumerate(pairs)]
    script = (f"cd {shlex.quote(remote.path)} || exit 1\n{keep}{_RENAME_SCRIPT}\n" + "\n".join(calls) + "\n")
    try:
        done = subprocess.run([*ssh, "--", remote.host, "sh -s"], input=script.encode(), capture_output=True,
                              check=False, timeout=remote.io_timeout + HARD_TIMEOUT_MARGIN)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    moved = {int(x) for x in done.stdout.split() if x.isdigit()}
    return {pair for i, pair in enumerate(pairs) if i in moved}


def _root_problem(spec: FolderSpec) -> str | None:
    try:
        st = os.stat(spec.source)
    except OSError as exc:
        return f"source folder {spec.source}: {exc.strerror}"
    if spec.root_id is not None and (st.st_dev, st.st_ino) != tuple(spec.root_id):
        return f"source folder {spec.source} is not the one being watched"
    return None


def _lstat(root: str, path: str) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(root, path))
    except OSError:
        return None
