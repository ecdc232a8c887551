"""The comparison of a folder with a remote target: rsync's own dry run, over the master.

`rsync -n -r --delete` lists every path that differs; each becomes a Difference fed to the
ChangeQueue as the local walk's are, so the mass-delete guard judges the deletions the same
way. Runs on the catch-up thread of the main process.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator

from foldermirror.catchup.compare import Difference, WalkStats
from foldermirror.pipeline.records import RemoteSpec
from foldermirror.remote import rsync
from foldermirror.remote.batch import HARD_TIMEOUT_MARGIN


class LinkDown(Exception):
    """The host could not be reached: the comparison runs again once the link is back."""


def diff_remote(source: str, remote: RemoteSpec, *, sub: str, delete: bool, excluded: Callable[[str, bool | None], bool],
                stats: WalkStats, hardlinks: bool = False) -> Iterator[Difference]:
    argv = rsync.argv(mode=rsync.Mode.COMPARE, source_root=source, host=remote.host, user=remote.user,
                      remote_root=remote.path, base=sub, ssh=list(remote.ssh[0]),
                      rsync_path=shlex.split(remote.rsync_path), delete=delete,
                      preserve_owner=remote.preserve_owner, keep=remote.keep, hardlinks=hardlinks, timeout_s=remote.io_timeout)
    argv.insert(1, "--stats")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    new = 0
    # rsync lists a directory to delete with everything in it: one that holds an excluded
    # entry must stay (a delete pass would take the entry with it), so deletions are held
    # back to the end and those directories left out. So is what is in such a directory
    # when the source lacks the directory too: a delete pass lists a path's topmost
    # ancestor the source lacks (rsync.deletion_list), which would be that directory. It
    # stays whole, as rsync --delete keeps a directory holding excluded files.
    deletions: list[str] = []
    keep: set[str] = set()
    try:
        for raw in proc.stdout:
            line = rsync.parse_line(raw, base=sub)
            if line is None:
                _count(raw, stats)
                continue
            # rsync says whether a deleted entry was a directory, not what else it was
            # (Kind.UNKNOWN): None, excluded if it is in either form, so it is never deleted.
            entry = line.kind
            if not line.path:
                continue
            if excluded(line.path, None if entry is rsync.Kind.UNKNOWN else entry is rsync.Kind.DIR):
                if line.action is rsync.Action.DELETED:
                    keep.update(_ancestors(line.path))
                continue
            if line.action is rsync.Action.DELETED:
                deletions.append(line.path)
                continue
            stats.differences += 1
            if line.new:
                new += 1
            if line.kind in (rsync.Kind.FILE, rsync.Kind.SYMLINK):
                stats.copies += 1
                stats.copy_bytes += line.size if line.kind is rsync.Kind.FILE else 0
            yield Difference(line.path, "missing" if line.new else "differs")
        lifted = _Lifted(source)
        for path in deletions:
            if path in keep or (keep and lifted(path) in keep):
                continue
            stats.differences += 1
            stats.doomed += 1
            yield Difference(path, "extra")
        err = proc.stderr.read()
        rc = proc.wait(timeout=remote.io_timeout + HARD_TIMEOUT_MARGIN)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    # What the target holds: the source's entries, less those it lacks, plus its extras.
    stats.target_entries = max(0, stats.entries - new) + stats.doomed
    kind = rsync.classify_run(rc, err)
    if kind in (rsync.RsyncExit.LINK, rsync.RsyncExit.UNKNOWN):
        raise LinkDown(rsync.explain(rc, err))
    if kind is not rsync.RsyncExit.OK and kind is not rsync.RsyncExit.PARTIAL:
        raise OSError(0, rsync.explain(rc, err))


class _Lifted:
    """The path a delete pass lists for a path the source lacks: its topmost ancestor the source lacks too."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._exists: dict[str, bool] = {}

    def __call__(self, path: str) -> str:
        for head in _ancestors(path):
            if head not in self._exists:
                self._exists[head] = os.path.lexists(os.path.join(self.source, head))
            if not self._exists[head]:
                return head
        return path


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


_NUMBER_OF_FILES = re.compile(rb"Number of files: ([\d,]+)(?: \(.*?dir: ([\d,]+))?")


def _count(raw: bytes, stats: WalkStats) -> None:
    # --stats: "Number of files: 1,234 (reg: 1,000, dir: 234)"; the root itself is one of them.
    m = _NUMBER_OF_FILES.match(raw)
    if m is not None:
        stats.entries = max(0, int(m.group(1).replace(b",", b"")) - 1)
        if m.group(2):
            stats.directories = int(m.group(2).strip(b",").replace(b",", b""))
