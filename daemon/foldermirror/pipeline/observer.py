"""watchdog's inotify observer, with its answer to a queue overflow made safe for big trees.

watchdog 7.1 answers an overflow of the kernel's event queue by removing every watch of the
tree and adding them all again. Each removal queues an IN_IGNORED event, so with more watched
directories than the queue holds (fs.inotify.max_queued_events, 16,384 by default) the
rebuild overflows the queue itself, and the next rebuild does too, for ever: measured here
with 20,000 directories, two overflows a second long after the writer had stopped, each
one a full comparison of every folder for the daemon.

The watches survive an overflow (only events were lost). What may be missing are watches of
directories made while events were being dropped, so a watch is added for each directory
that has none and nothing is removed; a directory renamed meanwhile is reported under its
old path until WatchHealth rebuilds the folder's watches. The daemon compares every folder
after an overflow anyway (WatchHealth.overflow), so no change is lost.

If watchdog's internals are not what this expects (another version), the plain Observer is used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any

from watchdog.observers import Observer

log = logging.getLogger("watchdog.observers.inotify")

try:
    from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
except ImportError:  # pragma: no cover - a watchdog without these internals
    InotifyWatchGroup = None  # type: ignore[assignment,misc]


def make_observer() -> Any:
    """A started-not-yet observer: ours where watchdog's internals allow, else watchdog's own."""
    if InotifyWatchGroup is None or not _fits(InotifyWatchGroup):
        return Observer()
    return _Observer()


def _fits(group: type) -> bool:
    """Whether watchdog's watch group has the parts the override below uses."""
    try:
        names = {f.name for f in dataclasses.fields(group)}
    except TypeError:  # no longer a dataclass
        return False
    return {"_lock", "_active_callbacks_by_path", "_move_event_grouper", "path", "is_recursive"} <= names and all(
        callable(getattr(group, m, None)) for m in ("_add_callback", "on_queue_overflow"))


if InotifyWatchGroup is not None:
    class _WatchGroup(InotifyWatchGroup):
        def on_queue_overflow(self) -> None:
            with self._lock:
                if not self.is_active:
                    return
                self._move_event_grouper.discard_pending_events()
                if not self.is_recursive:
                    return
                try:
                    self._add_missing(self.path)
                except OSError:
                    log.exception("Unable to add the missing inotify watches below %r", self.path)

        def _add_missing(self, root: bytes) -> None:
            """A watch for each directory under `root` (itself included) that has none; os.walk
            follows no symlink. A directory renamed meanwhile has one under its old path:
            adding it again gets that watch (inotify knows inodes) under the new path, and
            watchdog's warning about it is silenced below (stderr carries the JSON lines)."""
            watched = self._active_callbacks_by_path
            for top, _, _ in os.walk(root):
                if top not in watched:
                    self._add_callback(top)

    warnings.filterwarnings("ignore", message="Callback with id .* already exists for watch",
                            category=RuntimeWarning)

    class _Emitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            self._inotify = _WatchGroup(self._inotify_fd, os.fsencode(self.watch.path),
                                        is_recursive=self.watch.is_recursive,
                                        event_mask=self.get_event_mask_from_filter(),
                                        follow_symlink=self.watch.follow_symlink)

    class _Observer(InotifyObserver):
        def __init__(self, *, timeout: float = DEFAULT_OBSERVER_TIMEOUT) -> None:
            super().__init__(timeout=timeout)
            self._emitter_class = _Emitter
