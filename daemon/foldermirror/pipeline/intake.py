"""The inotify intake: watchdog's own inotify layer, without its observer's threads.

watchdog's Observer hands each event through three threads: its InotifyFD thread reads the
fd and files the event with the folder's watch group, a per-folder emitter thread builds an
event object from it, and the observer thread passes that to the handler. In a burst of
20,000 files (60,000 events) those hand-offs took half of the main process's time with the
GIL, and the reader fell so far behind that the kernel's queue overflowed (which costs a
full comparison of every folder). Here the InotifyFD thread calls the handler itself: one
thread for every folder, and nothing built per event that the handler does not read.

What watchdog still does: reading and parsing the fd, the watch descriptors and their
callbacks (InotifyFD), and in its watch groups the maps of watched paths, moved along with
a renamed directory. What is done here instead:

- Moves are paired here. A MOVED_FROM waits up to PAIR_WAIT for the MOVED_TO with its cookie
  (the kernel queues both within the one rename, but the reader may read between them);
  unpaired, it is a deletion, and the watches of a directory moved out of the tree go.
- A file's content events in one read (a write makes a create, a modify and a close) reach
  the handler as one: a third of the calls, each a pass through the ChangeQueue.
- A new directory's entries (made before its watch was) are reported as FOUND, from the walk
  that sets up its watches; the handler also compares the directory, which is what the
  guarantee rests on. A remote folder's comparison is a round trip per directory, so a
  burst that makes directories would otherwise wait for one after another.
- A watch is added only for a directory that has none (watchdog adds them all again, for
  the subdirectories of a `mkdir -p` too).
- An overflow of the kernel's queue adds a watch for each directory that has none and
  removes nothing. watchdog 7.1 removes every watch of the tree and adds them all again;
  each removal queues an IN_IGNORED event, so with more watched directories than the queue
  holds (fs.inotify.max_queued_events, 16,384 by default) its rebuild overflowed the queue
  itself, for ever (measured with 20,000 directories). The watches survive an overflow
  (only events were lost); a directory renamed meanwhile is reported under its old path
  until WatchHealth rebuilds the folder's watches, and every folder is compared anyway.

These are watchdog's internals (7.1): `fits()` checks that they are what this expects.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

from watchdog.observers.inotify import InotifyWatchGroup
from watchdog.observers.inotify_c import (
    DEFAULT_EVENT_BUFFER_SIZE,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

from foldermirror import faults

log = logging.getLogger("watchdog.observers.inotify")

PAIR_WAIT = 0.5  # seconds a MOVED_FROM waits for its MOVED_TO, as watchdog's own grouper waits

IN_CREATE = InotifyConstants.IN_CREATE
IN_DELETE = InotifyConstants.IN_DELETE
IN_DELETE_SELF = InotifyConstants.IN_DELETE_SELF
IN_MOVED_FROM = InotifyConstants.IN_MOVED_FROM
IN_MOVED_TO = InotifyConstants.IN_MOVED_TO
IN_ATTRIB = InotifyConstants.IN_ATTRIB
IN_MODIFY = InotifyConstants.IN_MODIFY
IN_CLOSE_WRITE = InotifyConstants.IN_CLOSE_WRITE
IN_ISDIR = InotifyConstants.IN_ISDIR
IN_Q_OVERFLOW = InotifyConstants.IN_Q_OVERFLOW
_BOOKKEEPING = IN_Q_OVERFLOW | InotifyConstants.IN_IGNORED

# What a source tree is watched for. Never IN_OPEN or IN_CLOSE_NOWRITE: the daemon's own walks
# of a tree (adding watches, comparing) would flood the queue on large trees.
SOURCE_MASK = Mask(IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVED_FROM | IN_MOVED_TO
                   | IN_ATTRIB | IN_MODIFY | IN_CLOSE_WRITE)
# A target root's own watch: deletions only. Not renames: publishing a file is a rename, and
# those events would cost the reader's time in every burst.
TARGET_MASK = Mask(IN_DELETE | IN_DELETE_SELF)


class Kind(enum.Enum):
    CREATED = "created"            # made, or moved in from outside the tree
    CLOSED = "closed"              # a file closed after writing
    MODIFIED = "modified"          # a file written to
    ATTRIB = "attrib"              # mode, owner, times, xattrs, link count
    DELETED = "deleted"            # removed, or moved out of the tree
    MOVED = "moved"                # renamed within the tree: `path` → `dest`
    ROOT_DELETED = "root_deleted"  # the watched root itself
    FOUND = "found"                # already in a new directory when its watch was set up


class Handler(Protocol):
    def handle(self, kind: Kind, path: bytes, is_dir: bool, dest: bytes | None) -> None:
        """Called on the reader thread, with no lock held. An exception ends the thread.

        A file's CREATED, MODIFIED, ATTRIB and CLOSED events that follow one another in one
        read of the fd come as one: CLOSED if any of them was, else MODIFIED."""


def fits() -> bool:
    """Whether watchdog's inotify internals have the parts this module uses."""
    try:
        names = {f.name for f in dataclasses.fields(InotifyWatchGroup)}
    except TypeError:  # no longer a dataclass
        return False
    methods = ("_add_callback", "_move_watches", "_remove_callbacks", "on_queue_overflow", "deactivate")
    return ({"_lock", "_active_callbacks_by_path", "_active_callbacks_by_watch", "_inotify_fd", "path",
             "is_recursive"} <= names
            and all(callable(getattr(InotifyWatchGroup, m, None)) for m in methods)
            and all(callable(getattr(InotifyFD, m, None)) for m in ("handle_event", "_check_inotify_fd",
                                                                    "_read_event_buffer", "_parse_event_buffer")))


_Delivery = tuple[Kind, bytes, bool, "bytes | None"]  # a Handler.handle call's arguments
_CONTENT = frozenset({Kind.CREATED, Kind.MODIFIED, Kind.ATTRIB, Kind.CLOSED})


@dataclass
class _Unpaired:
    deadline: float
    path: bytes
    is_dir: bool


@dataclass(eq=False)
class Group(InotifyWatchGroup):
    """The watches of one root (recursive or not) and the handler its events go to."""

    handler: Handler | None = None
    _unpaired: dict[int, _Unpaired] = field(default_factory=dict, init=False)
    _held: _Delivery | None = field(default=None, init=False)  # a file's content event, until the read ends
    _found: list[tuple[bytes, bool]] = field(default_factory=list, init=False)  # by the last _watch_tree

    @property
    def _reader(self) -> Reader:
        return cast(Reader, self._inotify_fd)  # Intake.schedule files every group with its Reader

    def on_event(self, event: InotifyEvent) -> None:
        self.on_raw(event.wd, event.mask, event.cookie, event.name)

    def on_raw(self, wd: WatchDescriptor, mask: int, cookie: int, name: bytes) -> None:
        """One event, as the kernel gave it (the reader builds no object for it)."""
        with self._lock:
            if not self._is_active:
                return
            watched = self._active_callbacks_by_watch.get(wd)
            if watched is None:
                return
            path = (watched + b"/" + name if watched[-1:] != b"/" else watched + name) if name else watched
            delivery = self._file(mask, cookie, path)
            if delivery is None:
                return
            send = self._coalesce(delivery)
            if self._found:
                send += [(Kind.FOUND, found, is_dir, None) for found, is_dir in self._found]
                self._found = []
        if self.handler is not None:
            for d in send:
                self.handler.handle(*d)

    def _coalesce(self, d: _Delivery) -> list[_Delivery]:
        """What to hand over now. A file's content events (a write makes a create, a modify and
        a close) wait for the end of the read, merged while they follow one another; the
        handler treats them alike, except that a close means the file is complete."""
        held = self._held
        if d[0] in _CONTENT and not d[2]:
            if held is not None and held[1] == d[1]:
                self._held = (Kind.CLOSED if Kind.CLOSED in (held[0], d[0]) else Kind.MODIFIED, d[1], False, None)
                return []
            self._held = d
            self._reader.unsent[id(self)] = self
            return [held] if held is not None else []
        self._held = None
        return [held, d] if held is not None else [d]

    def flush(self) -> None:
        """The end of a read: hand over the content event that waited for it."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None and self.handler is not None:
            self.handler.handle(*held)

    def _file(self, mask: int, cookie: int, path: bytes) -> _Delivery | None:
        """The watches' bookkeeping for one event (under the lock), and what the handler hears of it."""
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_MOVED_FROM:
            self._unpaired[cookie] = _Unpaired(time.monotonic() + PAIR_WAIT, path, is_dir)
            self._reader.holding[id(self)] = self
            return None
        if mask & IN_MOVED_TO:
            source = self._unpaired.pop(cookie, None)
            watched = source is not None and self._move_watches(source.path, path)
            if is_dir and self.is_recursive and not watched:
                self._watch_tree(path, self._found)  # its source was not watched, or lay outside
            if source is not None:
                return (Kind.MOVED, source.path, is_dir, path)
            return (Kind.CREATED, path, is_dir, None)
        if mask & IN_CREATE:
            if is_dir and self.is_recursive:
                self._watch_tree(path, self._found)  # before the handler hears of it: it compares the directory
            return (Kind.CREATED, path, is_dir, None)
        if mask & IN_DELETE:
            return (Kind.DELETED, path, is_dir, None)
        if mask & IN_DELETE_SELF:
            # A directory below the root: its parent's IN_DELETE tells.
            return (Kind.ROOT_DELETED, path, True, None) if path == self.path else None
        if mask & IN_ATTRIB:
            return (Kind.ATTRIB, path, is_dir, None)
        if is_dir:
            return None
        if mask & IN_CLOSE_WRITE:
            return (Kind.CLOSED, path, False, None)
        if mask & IN_MODIFY:
            return (Kind.MODIFIED, path, False, None)
        return None

    def settle_moves(self, now: float) -> float | None:
        """Report the MOVED_FROMs whose wait is over as deletions; the next deadline, if any."""
        with self._lock:
            if not self.is_active:
                self._unpaired.clear()
                return None
            due = [(cookie, u) for cookie, u in self._unpaired.items() if u.deadline <= now]
            for cookie, u in due:
                del self._unpaired[cookie]
                if u.is_dir:
                    self._drop_watches(u.path)
            upcoming = min((u.deadline for u in self._unpaired.values()), default=None)
        if self.handler is not None:
            for _, u in due:
                self.handler.handle(Kind.DELETED, u.path, u.is_dir, None)
        return upcoming

    def _drop_watches(self, top: bytes) -> None:
        """A directory moved out of the tree takes its watches along; its events are not ours."""
        prefix = top + b"/"
        wds = [wd for path, wd in self._active_callbacks_by_path.items() if path == top or path.startswith(prefix)]
        self._remove_callbacks(wds)

    def on_queue_overflow(self) -> None:
        with self._lock:
            if not self.is_active:
                return
            self._unpaired.clear()  # the comparison that follows an overflow finds what they were
            if not self.is_recursive:
                return
            try:
                self._watch_tree(self.path)
            except OSError:
                log.exception("Unable to add the missing inotify watches below %r", self.path)

    def _watch_tree(self, top: bytes, found: list[tuple[bytes, bool]] | None = None) -> None:
        """A watch for `top` and each directory below it that has none, following no symlink;
        with `found`, the entries of each directory that had none (path, is a directory).

        A directory watched already keeps its watch: a directory made with its subdirectories
        (`mkdir -p`) is seen again in their own events. One renamed meanwhile (events were
        lost) has a watch under its old path: adding it again gets that watch (inotify knows
        inodes) under the new path, and watchdog's warning about it is silenced below
        (stderr carries the JSON lines)."""
        watched = self._active_callbacks_by_path
        replay = found is not None and not (faults.ENABLED and faults.value("no_replay"))
        stack = [top]
        while stack:
            path = stack.pop()
            new = watched.get(path, -1) < 0  # watchdog files a directory it was refused (EACCES) under -1
            if new:
                self._add_callback(path)  # raises only for the root
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        if is_dir:
                            stack.append(entry.path)
                        if new and replay:
                            assert found is not None
                            found.append((entry.path, is_dir))
            except OSError:
                continue  # unreadable, or gone: the comparison says which

    def watch_below(self, path: bytes) -> bool:
        """Watch directory `path` and those under it if it has no watch yet (True: it had none)."""
        with self._lock:
            # watchdog files a directory it was refused (EACCES) under watch descriptor -1.
            if self._active_callbacks_by_path.get(path, -1) >= 0:
                return False
            try:
                self._watch_tree(path)
            except OSError:
                return False  # still unreadable, or gone again: the comparison says which
        return True


warnings.filterwarnings("ignore", message="Callback with id .* already exists for watch", category=RuntimeWarning)


class Reader(InotifyFD):
    """The one thread that reads the inotify fd and calls each group's handler."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self.name = "inotify"
        self.on_overflow = on_overflow
        self.holding: dict[int, Group] = {}  # by id(): groups with a MOVED_FROM waiting (this thread only)
        self.unsent: dict[int, Group] = {}   # by id(): groups holding a content event until the read ends
        self._next_deadline: float | None = None

    def run(self) -> None:
        while self.should_keep_running():
            self._read()
            for group in self.unsent.values():
                group.flush()
            self.unsent.clear()
            self._settle_moves()

    def _read(self) -> None:
        """One read of the fd, handed to the groups; InotifyFD.handle_event only for the rare
        events that change the watches themselves (IN_IGNORED) or all of them (overflow)."""
        for wd, mask, cookie, name in self._parse_event_buffer(self._read_event_buffer(DEFAULT_EVENT_BUFFER_SIZE)):
            if mask & _BOOKKEEPING:
                if wd != -1 or mask & IN_Q_OVERFLOW:
                    self.handle_event(InotifyEvent(wd, mask, cookie, name))
                continue
            with self._lock:
                watch = self._watch_for_wd.get(wd)
                callbacks = tuple(watch.callbacks.values()) if watch is not None else ()
            for callback in cast("tuple[Group, ...]", callbacks):  # only groups are filed with this reader
                callback.on_raw(wd, mask, cookie, name)

    def _settle_moves(self) -> None:
        now = time.monotonic()
        self._next_deadline = None
        for key, group in list(self.holding.items()):
            upcoming = group.settle_moves(now)
            if upcoming is None:
                del self.holding[key]
            elif self._next_deadline is None or upcoming < self._next_deadline:
                self._next_deadline = upcoming

    def _check_inotify_fd(self) -> bool:
        """Wait for the fd (or the stop pipe); with a move waiting for its pair, no longer than its wait."""
        poller = self._poller
        if poller is None:  # pragma: no cover - Linux has poll
            return bool(super()._check_inotify_fd())
        timeout = None if self._next_deadline is None else max(0, int((self._next_deadline - time.monotonic()) * 1000) + 1)
        return any(fd == self._inotify_fd for fd, _ in poller.poll(timeout))

    def handle_event(self, event: InotifyEvent) -> None:
        if not event.is_queue_overflow:
            super().handle_event(event)
            return
        with self._lock:
            groups = {id(cb): cb for watch in self._watch_for_wd.values() for cb in watch.callbacks.values()}
        for group in groups.values():
            group.on_queue_overflow()
        self.on_overflow()


class Intake:
    """One reader for every watched root; `schedule` hands back the root's group."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        self.reader = Reader(on_overflow)

    def start(self) -> None:
        self.reader.start()

    def schedule(self, path: str, handler: Handler, *, recursive: bool, mask: Mask) -> Group:
        """Watch `path` (and, if recursive, every directory below it); OSError if the root cannot be."""
        return Group(self.reader, os.fsencode(path), event_mask=mask, is_recursive=recursive, handler=handler)

    def unschedule(self, group: Group) -> None:
        group.deactivate()

    def is_alive(self) -> bool:
        return self.reader.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.reader.join(timeout)

    def stop(self) -> None:
        self.reader.stop()
