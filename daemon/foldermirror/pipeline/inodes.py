"""The names of each multi-linked source inode, per folder: what a hard link is made to.

Kept in the main process (workers get the names in WorkItem.link_to) and only for files
with st_nlink > 1 in folders that keep hard links. Filled by the comparison's walk (it has
every stat) and by outcomes (a worker reports the inode of a file with other names it
published, found in place, or renamed). Every name is a hint, never trusted: a worker links
to one only after checking that it is still that inode in the source and that its mirror
holds the inode's content, else it copies. So names of a file deleted or replaced since
are harmless; they go when a completed comparison of the whole folder replaces the
folder's names with what it saw.

Memory (tracemalloc, 1,000,000 names of ~30 characters): 148 bytes a name where every
inode has two names, 158 where each has one; path strings are most of it. Past `max_names`
names in all folders, a whole-folder walk's rebuild included (so at most ~150 MB at any
time), new ones are not kept: a file whose other names are not known is published as a
copy (`full()` tells the caller to say so once), and a rebuild that could not keep every
name leaves the old map in place.
"""

from __future__ import annotations

import threading

from foldermirror.pipeline.records import InodeId

# Names kept in all folders, rebuilds included: about 150 MB at the worst.
NAMES_MAX = 1_000_000
# Names a link item carries (a file with thousands of names needs only one that checks out).
CANDIDATES_MAX = 8

# Per folder: inode (dev << 64 | ino, one int instead of a tuple of two) → its name, or its
# names most recently published first. A str for the common single name: a tuple costs more.
_Names = dict[int, "str | tuple[str, ...]"]


def _key(inode: InodeId) -> int:
    return (inode[0] << 64) | inode[1]


class _Folder:
    __slots__ = ("count", "names", "next", "next_count", "next_refused")

    def __init__(self) -> None:
        self.names: _Names = {}
        self.count = 0
        self.next: _Names | None = None  # being rebuilt by a whole-folder walk
        self.next_count = 0
        self.next_refused = False  # the rebuild could not keep every name: the old map stays


class InodeNames:
    """The per-folder inode → names map (thread-safe: the walk and the result collector feed it)."""

    def __init__(self, max_names: int = NAMES_MAX) -> None:
        self.max_names = max_names
        self._folders: dict[str, _Folder] = {}
        self._lock = threading.Lock()
        self._full: set[str] = set()  # folders told once that the map is full
        self._count = 0  # names kept in all folders (walks' rebuilds included)

    def seen(self, folder: str, inode: InodeId, path: str) -> bool:
        """`path` is (or is about to be) a mirrored name of `inode`; it becomes the first
        candidate. False when it could not be kept: the map is full."""
        key = _key(inode)
        with self._lock:
            f = self._folders.get(folder)
            if f is None:
                f = self._folders[folder] = _Folder()
            ok = self._put(f, f.names, key, path, live=True)
            if f.next is not None and not self._put(f, f.next, key, path, live=False):
                f.next_refused = True
                ok = False
            return ok

    def _put(self, f: _Folder, names: _Names, key: int, path: str, *, live: bool) -> bool:
        had = names.get(key)
        if had == path or (isinstance(had, tuple) and had[0] == path):
            return True
        if had is None:
            new: str | tuple[str, ...] = path
        else:
            rest = (had,) if isinstance(had, str) else had
            new = (path, *(n for n in rest if n != path))
        grows = len(new if isinstance(new, tuple) else (new,)) - (0 if had is None else len(rest))
        if grows and self._count + grows > self.max_names:
            return False
        names[key] = new
        self._count += grows
        if live:
            f.count += grows
        else:
            f.next_count += grows
        return True

    def _recount(self) -> None:
        self._count = sum(f.count + f.next_count for f in self._folders.values())

    def others(self, folder: str, inode: InodeId, path: str) -> tuple[str, ...]:
        """The known names of `inode` but `path`, most recently published first (at most
        CANDIDATES_MAX)."""
        with self._lock:
            f = self._folders.get(folder)
            had = f.names.get(_key(inode)) if f is not None else None
        if had is None:
            return ()
        names = (had,) if isinstance(had, str) else had
        return tuple(n for n in names if n != path)[:CANDIDATES_MAX]

    def known(self, folder: str, inode: InodeId) -> bool:
        """Some name of `inode` was seen (by a walk or an outcome)."""
        with self._lock:
            f = self._folders.get(folder)
            return f is not None and _key(inode) in f.names

    def drop(self, folder: str, inode: InodeId, path: str) -> None:
        """`path` is no longer a name of `inode` (renamed away)."""
        key = _key(inode)
        with self._lock:
            f = self._folders.get(folder)
            if f is None:
                return
            for names, live in ((f.names, True), (f.next, False)):
                had = names.get(key) if names is not None else None
                if had is None or names is None:
                    continue
                rest = tuple(n for n in ((had,) if isinstance(had, str) else had) if n != path)
                gone = (1 if isinstance(had, str) else len(had)) - len(rest)
                if not rest:
                    del names[key]
                else:
                    names[key] = rest[0] if len(rest) == 1 else rest
                if live:
                    f.count -= gone
                else:
                    f.next_count -= gone
                self._count -= gone

    def begin_walk(self, folder: str) -> None:
        """A comparison of the whole folder starts: what it (and outcomes meanwhile) sees
        replaces the folder's names once it ends complete."""
        with self._lock:
            f = self._folders.get(folder)
            if f is None:
                f = self._folders[folder] = _Folder()
            f.next, f.next_count, f.next_refused = {}, 0, False
            self._recount()

    def end_walk(self, folder: str, complete: bool) -> None:
        with self._lock:
            f = self._folders.get(folder)
            if f is None or f.next is None:
                return
            if complete and not f.next_refused:
                f.names, f.count = f.next, f.next_count
            f.next, f.next_count, f.next_refused = None, 0, False
            self._recount()
            if self._count < self.max_names:
                self._full.discard(folder)

    def full(self, folder: str) -> bool:
        """True once per folder when a name could not be kept (the caller warns)."""
        with self._lock:
            if folder in self._full:
                return False
            self._full.add(folder)
            return True

    def forget(self, folder: str) -> None:
        with self._lock:
            self._folders.pop(folder, None)
            self._full.discard(folder)
            self._recount()

    def names(self, folder: str) -> int:
        with self._lock:
            f = self._folders.get(folder)
            return f.count if f is not None else 0
