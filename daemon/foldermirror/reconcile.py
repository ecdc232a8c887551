"""Tree comparison: what differs between a source and its target (type, size, mtime, mode).

The only judge of what is out of date at start-up, after an overflow, for a subtree that
appeared, and on every periodic rescan. It feeds the ChangeQueue; it never copies.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from foldermirror.copier import is_temp_name, temp_owner
from foldermirror.paths import Excluder


@dataclass(frozen=True)
class _Entry:
    kind: int          # stat.S_IFMT
    size: int
    mtime_ns: int
    mode: int


@dataclass
class Difference:
    path: str
    reason: str        # missing | differs | extra | special


@dataclass
class WalkStats:
    entries: int = 0
    differences: int = 0
    stale_temps: int = 0
    directories: int = 0     # source directories walked, the root included: what inotify must watch
    unreadable: list[str] | None = None


def _scan(path: str, unreadable: list[str] | None, rel: str) -> dict[str, _Entry] | None:
    try:
        it = os.scandir(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except PermissionError:
        if unreadable is not None:
            unreadable.append(rel)
        return None
    out: dict[str, _Entry] = {}
    with it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out[entry.name] = _Entry(stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def diff_tree(source: str, target: str, excluded: Excluder, delete: bool, instance: str,
              sub: str = "", stats: WalkStats | None = None,
              writer_alive: Callable[[int], bool] = lambda pid: True,
              clean_temps: bool = True) -> Iterator[Difference]:
    """Yield every path under `sub` whose mirror is missing, differs, or (with delete) is extra.

    Temp files are removed on the way when their writer is gone: another daemon instance
    (a crash or a kill) or one of our workers that died; live workers' are left alone.
    With `clean_temps=False` (a dry run) they are only counted.
    """
    stats = stats if stats is not None else WalkStats()
    if stats.unreadable is None:
        stats.unreadable = []
    stack = [sub]
    while stack:
        rel = stack.pop()
        sdir = os.path.join(source, rel) if rel else source
        tdir = os.path.join(target, rel) if rel else target
        s_entries = _scan(sdir, stats.unreadable, rel)
        if s_entries is None:
            if rel == "":
                return  # a missing source root is never a reason to delete anything
            s_entries = {}
        else:
            stats.directories += 1
        t_entries = _scan(tdir, None, rel) or {}
        for name, s in s_entries.items():
            path = f"{rel}/{name}" if rel else name
            if excluded(path):
                continue
            stats.entries += 1
            t = t_entries.get(name)
            if s.kind == stat.S_IFDIR:
                if t is None or t.kind != s.kind or t.mode != s.mode:
                    stats.differences += 1
                    yield Difference(path, "missing" if t is None else "differs")
                stack.append(path)
            elif s.kind == stat.S_IFREG:
                if t is None or t.kind != s.kind or (t.size, t.mtime_ns, t.mode) != (s.size, s.mtime_ns, s.mode):
                    stats.differences += 1
                    yield Difference(path, "missing" if t is None else "differs")
            elif s.kind == stat.S_IFLNK:
                if t is None or t.kind != s.kind or _readlink(sdir, name) != _readlink(tdir, name):
                    stats.differences += 1
                    yield Difference(path, "missing" if t is None else "differs")
            elif t is None or t.kind != s.kind:
                yield Difference(path, "special")
        for name, t in t_entries.items():
            if is_temp_name(name):
                owner, pid = temp_owner(name)
                stale = owner != instance or not writer_alive(pid)
                if stale and not clean_temps:
                    stats.stale_temps += 1
                elif stale:
                    try:
                        os.unlink(os.path.join(tdir, name))
                        stats.stale_temps += 1
                    except OSError:
                        pass
                continue
            if name in s_entries:
                continue
            path = f"{rel}/{name}" if rel else name
            if delete and not excluded(path):
                stats.differences += 1
                yield Difference(path, "extra")


def _readlink(dirpath: str, name: str) -> str | None:
    try:
        return os.readlink(os.path.join(dirpath, name))
    except OSError:
        return None


@dataclass(frozen=True)
class Request:
    folder: str
    sub: str
    reason: str        # startup | overflow | rescan | subtree | reload | watch_restored
    ready: bool        # False: let the settle timer run (files may still be written)


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
            for queued in self._requests:
                if queued.folder == req.folder and _covers(queued.sub, req.sub) and queued.ready >= req.ready:
                    return
            self._requests = [q for q in self._requests
                              if not (q.folder == req.folder and _covers(req.sub, q.sub) and req.ready >= q.ready)]
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


def _covers(outer: str, inner: str) -> bool:
    return outer == "" or inner == outer or inner.startswith(outer + "/")

