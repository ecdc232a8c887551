"""Coalescing of changes per path, settle timers, in-flight and dirty tracking. No I/O.

A path is handed out when it is *ready*: a close-after-write or deletion says so at once;
any other event makes it ready after `settle` seconds without further events. A path that
was handed out less than `settle` ago is *hot* (rewritten again and again): it waits for
`settle` seconds of quiet even after a close, so a busy file is copied a few times, not
once per write. Quiet may never come (a log appended to for ever): `max_delay` after its
first event a path is handed out anyway, marked `busy`. A path in flight is never handed
out twice: an event for it during flight leaves a pending entry that becomes eligible
again when the flight is done ("dirty").

A path sent with `link_to` (hard links: the other names of its inode whose mirror it is to
share) holds those names too while it flies, as a reader: it is not handed out while one
of them is in flight (its mirror may be being replaced), and they are not handed out while
it flies (it links to their mirror); two links to one name may fly at once.

Ready paths wait in three lanes, handed out in this order: *express* (a live change in a
directory with nothing else ready: a person saving a document), *live* (the rest of the
changes the watcher saw: a burst), *bulk* (what a comparison found: a catch-up). So a save
does not queue behind a bulk copy of thousands of files, and a catch-up yields to live
work; within a lane, first come, first out.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Key = tuple[str, str]  # (folder name, path relative to the folder's source)
EXPRESS, LIVE, BULK = 0, 1, 2  # the ready lanes, in the order they are handed out
# Ready items not yet handed out beyond which a walk waits (see wait_for_room): enough
# to keep every worker busy, few enough that a catch-up of a million files does not
# hold a million entries (each costs some 400 bytes, and CPython keeps the arenas).
BACKLOG_MAX = 4096


@dataclass(frozen=True)
class Item:
    """One unit of work: mirror `path`; with `origin`, first try to rename origin → path.

    `walk`: a directory was moved here; its contents came without events of their own, so
    the subtree is compared once the item is done, however the move was replayed.
    `epoch`: the folder's epoch when the item was handed out (see `forget`).
    `busy`: handed out by `max_delay` while the path was still changing.
    `link_to`: see WorkItem.link_to (hard links).
    `bulk`: handed out from the bulk lane (a comparison found it), in a batch of bulk items only.
    """

    folder: str
    path: str
    origin: str | None
    first_seen: float
    walk: bool = False
    epoch: int = 0
    busy: bool = False
    link_to: tuple[str, ...] | None = None
    bulk: bool = False


@dataclass
class _Entry:
    first_seen: float
    last_event: float
    settle: float
    deadline: float = math.inf    # handed out by then even if never quiet (first_seen + max_delay)
    ready: bool = False
    not_before: float = 0.0
    origin: str | None = None
    walk: bool = False
    queued: bool = False          # sits in a ready lane
    bulk: bool = False            # found by a comparison, not seen by the watcher: the bulk lane
    timer: float | None = None    # deadline of its live heap entry
    link_to: tuple[str, ...] | None = None


@dataclass
class ChangeQueue:
    clock: Callable[[], float] = time.monotonic
    _entries: dict[Key, _Entry] = field(default_factory=dict)
    _in_flight: set[Key] = field(default_factory=set)
    _lanes: tuple[deque[Key], deque[Key], deque[Key]] = field(default_factory=lambda: (deque(), deque(), deque()))
    # Per (folder, directory): how many keys the express and live lanes hold (stale ones too).
    _dir_ready: dict[Key, int] = field(default_factory=dict)
    _timers: list[tuple[float, int, Key]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _epochs: dict[str, int] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cond: threading.Condition = field(init=False)  # takers wait here for ready items
    _room: threading.Condition = field(init=False)  # walks wait here for the backlog to shrink
    _closed: bool = False
    _handed_out: dict[Key, float] = field(default_factory=dict)  # hot-path memory, pruned
    _max_settle: float = 0.0
    _next_prune: float = 0.0
    _pending: dict[str, int] = field(default_factory=dict)  # per folder: len(_entries) of it
    _flying: dict[str, int] = field(default_factory=dict)   # per folder: len(_in_flight) of it
    # Folders whose target cannot be reached: their due paths wait here, by folder, coalesced.
    _held: dict[str, dict[Key, None]] = field(default_factory=dict)  # ordered sets: first come, first out
    # Folders mirrored one batch at a time (remote ones, see serial()), and their due paths
    # waiting for the batch in flight to end.
    _serial: set[str] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)  # serial folders with a batch in flight, until landed()
    _waiting: dict[str, dict[Key, None]] = field(default_factory=dict)
    # Hard links: names held by the link items in flight (how many each), and the paths
    # waiting for a name to land, by that name (see the module docstring).
    _readers: dict[Key, int] = field(default_factory=dict)
    _after: dict[Key, set[Key]] = field(default_factory=dict)
    # Debug hook, called under the lock with ("event" | "ready" | "dispatched", key); must be cheap.
    tracer: Callable[[str, Key], None] | None = None
    backlog_max: int = BACKLOG_MAX
    # Called (under the lock; must be cheap) on every new change: wakes an owner that sleeps while idle.
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._cond = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)

    # -- producers -------------------------------------------------------------
    def touch(self, folder: str, path: str, *, settle: float, ready: bool = False,
              not_before: float | None = None, max_delay: float = 0.0,
              link_to: tuple[str, ...] | None = None, bulk: bool = False) -> None:
        """Record that `path` may differ from its mirror.

        `not_before` replaces a retry backoff: a new event passes 0 (retry as soon as the
        path settles: the cause may be fixed), a failure passes its next retry time.
        `max_delay` (0: none) bounds how long a path that never goes quiet waits.
        `link_to` (hard links) replaces the path's hint; None keeps the one it has.
        `bulk`: found by a comparison (the bulk lane); a change seen live moves it up.
        """
        with self._cond:
            now = self.clock()
            key = (folder, path)
            if self.tracer is not None:
                self.tracer("event", key)
            e = self._entries.get(key)
            if e is None:
                e = self._add(key, _Entry(first_seen=now, last_event=now, settle=settle,
                                          deadline=now + max_delay if max_delay > 0 else math.inf, bulk=bulk))
            elif e.bulk and not bulk:
                e.bulk = False
                if e.queued:  # its place in the bulk lane is left stale (see _next_key)
                    self._enqueue(key, e)
            e.last_event = now
            e.settle = settle
            e.ready = e.ready or ready
            if not_before is not None:
                e.not_before = not_before
            if link_to is not None:
                e.link_to = link_to
            self._schedule(key, e, now)
            if self.on_change is not None:
                self.on_change()

    def moved(self, folder: str, src: str, dst: str, *, settle: float, is_dir: bool = False) -> None:
        """`src` was renamed to `dst` inside one folder: replay it as a rename in the target."""
        with self._cond:
            now = self.clock()
            skey, dkey = (folder, src), (folder, dst)
            if self.tracer is not None:
                self.tracer("event", dkey)
            if skey in self._in_flight or dkey in self._in_flight:
                self._touch_locked(skey, settle, now)
                self._touch_locked(dkey, settle, now, walk=is_dir)
                if self.on_change is not None:
                    self.on_change()
                return
            origin = src
            first = now
            prev = self._remove(skey)
            if prev is not None:
                first = min(first, prev.first_seen)
                if prev.origin is not None:
                    # A → B → C: rename A's mirror straight to C; B's mirror (if any) is checked too.
                    origin = prev.origin
                    self._touch_locked(skey, settle, now)
            e = self._entries.get(dkey)
            if e is None:
                e = self._add(dkey, _Entry(first_seen=first, last_event=now, settle=settle))
            e.first_seen = min(e.first_seen, first)
            e.last_event = now
            e.origin = None if origin == dst else origin
            e.walk = e.walk or is_dir
            e.ready = True
            self._schedule(dkey, e, now)
            if self.on_change is not None:
                self.on_change()

    def _add(self, key: Key, e: _Entry) -> _Entry:
        self._entries[key] = e
        self._pending[key[0]] = self._pending.get(key[0], 0) + 1
        return e

    def _remove(self, key: Key) -> _Entry | None:
        e = self._entries.pop(key, None)
        if e is not None:
            self._pending[key[0]] -= 1
        return e

    def _fly(self, key: Key) -> None:
        if key not in self._in_flight:
            self._in_flight.add(key)
            self._flying[key[0]] = self._flying.get(key[0], 0) + 1

    def _land(self, key: Key) -> None:
        if key in self._in_flight:
            self._in_flight.discard(key)
            self._flying[key[0]] -= 1

    def wait_for_room(self) -> None:
        """Block while `backlog_max` or more items are ready and not handed out yet.

        For a producer that finds changes much faster than the workers mirror them (a
        catch-up walk); it goes on once half the backlog has been handed out, or at close().
        """
        with self._cond:
            while self._backlog() >= self.backlog_max and not self._closed:
                self._room.wait()

    def _backlog(self) -> int:
        return self._ready_count() + sum(len(w) for w in self._waiting.values())

    def _ready_count(self) -> int:
        return sum(len(lane) for lane in self._lanes)

    def _enqueue(self, key: Key, e: _Entry) -> None:
        e.queued = True
        if e.bulk:
            self._lanes[BULK].append(key)
            return
        where = (key[0], key[1].rpartition("/")[0])
        n = self._dir_ready.get(where, 0)
        self._dir_ready[where] = n + 1
        self._lanes[LIVE if n else EXPRESS].append(key)

    def _next_key(self) -> Key | None:
        """The next key of the first lane that has one (perhaps stale: the caller checks)."""
        for lane in self._lanes:
            if lane:
                key = lane.popleft()
                if lane is not self._lanes[BULK]:
                    where = (key[0], key[1].rpartition("/")[0])
                    n = self._dir_ready[where] - 1
                    if n:
                        self._dir_ready[where] = n
                    else:
                        del self._dir_ready[where]
                return key
        return None

    def _touch_locked(self, key: Key, settle: float, now: float, walk: bool = False) -> None:
        e = self._entries.get(key)
        if e is None:
            e = self._add(key, _Entry(first_seen=now, last_event=now, settle=settle))
        e.last_event = now
        e.walk = e.walk or walk
        e.ready = True
        self._schedule(key, e, now)

    def _natural_at(self, key: Key, e: _Entry) -> float:
        """When the path is due by its events alone: closed (and not hot), or quiet."""
        quiet = e.last_event + e.settle
        if e.ready:
            last = self._handed_out.get(key)
            hot = last is not None and e.last_event - last < e.settle
            return quiet if hot else e.first_seen
        return quiet

    def _eligible_at(self, key: Key, e: _Entry) -> float:
        return _due(e, self._natural_at(key, e))

    def _schedule(self, key: Key, e: _Entry, now: float) -> None:
        if key in self._in_flight:
            return  # done() reschedules it
        at = self._eligible_at(key, e)
        held = self._held.get(key[0])
        if held is not None and at <= now:
            held[key] = None  # release() schedules it again
            return
        if at <= now and key[0] in self._busy:
            self._waiting.setdefault(key[0], {})[key] = None  # landed() schedules it again
            return
        if at <= now:
            if not e.queued:
                self._enqueue(key, e)
                self._cond.notify()
                if self.tracer is not None:
                    self.tracer("ready", key)
        elif e.timer is None or e.timer > at:
            e.timer = at
            heapq.heappush(self._timers, (at, next(self._seq), key))
            self._cond.notify()

    def _promote(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            at, _, key = heapq.heappop(self._timers)
            e = self._entries.get(key)
            if e is None or e.timer != at:
                continue
            e.timer = None
            self._schedule(key, e, now)

    # -- consumer --------------------------------------------------------------
    def take(self, max_items: int, timeout: float | None, spread: int = 1, bulk_max: int | None = None) -> list[Item]:
        """Up to `max_items` ready items (fewer, so that `spread` takers share a burst).

        With `bulk_max`, a batch taken while only the bulk lane holds items may have up to
        that many (all of them bulk): a catch-up's batches are big, a live change's small.
        Blocks up to `timeout` seconds (None: until there are items); returns [] on
        timeout or after close().
        """
        deadline = math.inf if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                now = self.clock()
                self._promote(now)
                ready = self._ready_count()
                if ready:
                    most = max_items
                    if bulk_max is not None and not (self._lanes[EXPRESS] or self._lanes[LIVE]):
                        most = bulk_max
                    limit = max(1, min(most, math.ceil(ready / max(1, spread))))
                    items = self._pop_ready(limit, now)
                    if items:
                        return items
                if self._closed or now >= deadline:
                    return []
                wait = deadline - now
                if self._timers:
                    wait = min(wait, max(0.0, self._timers[0][0] - now))
                self._cond.wait(None if wait == math.inf else wait)

    def take_more(self, folder: str, max_items: int) -> list[Item]:
        """Up to `max_items` more ready items of one folder, without waiting: a remote
        folder's batch costs a round trip whatever its size, so it is filled up."""
        with self._cond:
            now = self.clock()
            self._promote(now)
            mine: tuple[deque[Key], deque[Key], deque[Key]] = (deque(), deque(), deque())
            others: tuple[deque[Key], deque[Key], deque[Key]] = (deque(), deque(), deque())
            taken = 0
            for lane, m, o in zip(self._lanes, mine, others, strict=True):
                for key in lane:
                    if key[0] == folder and taken < max_items:
                        m.append(key)
                        taken += 1
                    else:
                        o.append(key)
            self._lanes = mine
            items = self._pop_ready(max_items, now, filling={folder})
            for m, o in zip(mine, others, strict=True):
                m.extend(o)  # what _pop_ready put back, then the rest, in order
            return items

    def landed(self, folder: str) -> None:
        """A serial folder's batch is back from its worker (its lines not written yet): the
        next batch may go, while this one's results are recorded."""
        with self._cond:
            if folder in self._busy:
                self._busy.discard(folder)
                self._reschedule(self._waiting.pop(folder, {}), self.clock())
                self._room.notify_all()

    def serial(self, folder: str, on: bool = True) -> None:
        """Hand out the folder's paths one batch at a time: none while a batch of it is in
        flight. A remote folder's batch is one rsync pass, and two at once on one link
        share its bandwidth (and, to a host on this machine, its CPUs) for no gain."""
        with self._cond:
            if on:
                self._serial.add(folder)
            else:
                self._serial.discard(folder)
                self._busy.discard(folder)
                self._reschedule(self._waiting.pop(folder, {}), self.clock())

    def _reschedule(self, keys: Iterable[Key], now: float) -> None:
        for key in keys:
            e = self._entries.get(key)
            if e is not None:
                self._schedule(key, e, now)

    def _pop_ready(self, limit: int, now: float, filling: set[str] | None = None) -> list[Item]:
        if len(self._handed_out) > 4096 and now >= self._next_prune:
            # At most once per settle period: in a burst, all of them may still be recent.
            self._prune_locked(now)
        items: list[Item] = []
        filling = set() if filling is None else filling  # serial folders whose batch this call makes
        while len(items) < limit:
            key = self._next_key()
            if key is None:
                break
            e = self._entries.get(key)
            if e is None or not e.queued:
                continue
            e.queued = False
            if key in self._in_flight:
                continue
            wait_for = self._link_blocker(key, e)
            if wait_for is not None:
                self._after.setdefault(wait_for, set()).add(key)  # done_all() schedules it again
                continue
            held = self._held.get(key[0])
            if held is not None:
                held[key] = None
                continue
            if key[0] in self._serial:
                if key[0] in self._busy and key[0] not in filling:
                    self._waiting.setdefault(key[0], {})[key] = None
                    continue
                filling.add(key[0])
                self._busy.add(key[0])
            natural = self._natural_at(key, e)
            if _due(e, natural) > now:
                self._schedule(key, e, now)
                continue
            origin = e.origin
            if origin is not None:
                okey = (key[0], origin)
                if okey in self._in_flight:
                    origin = None  # fall back to copy + delete; the origin is re-checked after its flight
                    self._touch_locked(okey, e.settle, now)
                else:
                    self._fly(okey)
            busy = natural > now  # due by max_delay, not by its events
            link_to = tuple(o for o in e.link_to if o != key[1]) if e.link_to is not None else None
            for other in link_to or ():
                okey = (key[0], other)
                self._readers[okey] = self._readers.get(okey, 0) + 1
            self._remove(key)
            self._fly(key)
            self._handed_out[key] = now
            self._max_settle = max(self._max_settle, e.settle)
            items.append(Item(folder=key[0], path=key[1], origin=origin, first_seen=e.first_seen, walk=e.walk,
                              epoch=self._epochs.get(key[0], 0), busy=busy, link_to=link_to, bulk=e.bulk))
            if self.tracer is not None:
                self.tracer("dispatched", key)
        if self._ready_count() <= self.backlog_max // 2:
            self._room.notify_all()
        return items

    def _link_blocker(self, key: Key, e: _Entry) -> Key | None:
        """A path that must land before `key` may fly: a link item's name in flight, or a link
        item in flight that holds `key` (see the module docstring)."""
        if key in self._readers:
            return key
        for other in e.link_to or ():
            okey = (key[0], other)
            if okey in self._in_flight and okey != key:
                return okey
        return None

    def done(self, item: Item) -> None:
        """The flight of `item` ended; a change that came meanwhile makes it eligible again."""
        self.done_all([item])

    def done_all(self, items: list[Item]) -> None:
        with self._cond:
            now = self.clock()
            for item in items:
                keys = [(item.folder, item.path)]
                if item.origin is not None:
                    keys.append((item.folder, item.origin))
                for other in item.link_to or ():
                    okey = (item.folder, other)
                    left = self._readers.get(okey, 0) - 1
                    if left > 0:
                        self._readers[okey] = left
                    else:
                        self._readers.pop(okey, None)
                        keys.append(okey)  # paths waiting for it
                for key in keys:
                    self._land(key)
                    e = self._entries.get(key)
                    if e is not None:
                        self._schedule(key, e, now)
                    if key not in self._readers:
                        self._reschedule(self._after.pop(key, ()), now)

    def prune(self) -> None:
        """Forget when paths no longer hot were handed out (memory a big batch leaves behind)."""
        with self._cond:
            self._prune_locked(self.clock())
            # A dict or set keeps the table it grew to after its keys are gone: 100,000 paths
            # queued at once leave about 0.3 MiB behind. Copies are sized to what is left.
            self._entries = dict(self._entries)
            self._in_flight = set(self._in_flight)

    def _prune_locked(self, now: float) -> None:
        self._handed_out = {k: t for k, t in self._handed_out.items() if now - t < self._max_settle}
        self._next_prune = now + self._max_settle

    def forget(self, folder: str) -> None:
        """Drop everything pending for a folder (removed or changed by a reload, or its
        source root changed) and start a new epoch: items handed out before are stale."""
        with self._cond:
            self._epochs[folder] = self._epochs.get(folder, 0) + 1
            for key in [k for k in self._entries if k[0] == folder]:
                self._remove(key)

    def hold(self, folder: str) -> None:
        """Hand out none of the folder's paths until release(): its target is unreachable.
        They keep coalescing by path meanwhile."""
        with self._cond:
            self._held.setdefault(folder, {})

    def release(self, folder: str) -> None:
        with self._cond:
            self._reschedule(self._held.pop(folder, {}), self.clock())

    def held(self, folder: str) -> bool:
        return folder in self._held

    def epoch(self, folder: str) -> int:
        with self._cond:
            return self._epochs.get(folder, 0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._room.notify_all()

    # -- observation -----------------------------------------------------------
    def counts(self, folder: str | None = None) -> tuple[int, int]:
        """(pending, in flight), for one folder or all."""
        with self._cond:
            if folder is None:
                return len(self._entries), len(self._in_flight)
            return self._pending.get(folder, 0), self._flying.get(folder, 0)

    def next_due(self) -> float | None:
        """When there is next work: a time already past while anything is in flight or
        pending (settling included), the earliest retry when only backoffs wait, None when
        nothing is left."""
        with self._cond:
            if self._in_flight:
                return 0.0
            now = self.clock()
            earliest: float | None = None
            for e in self._entries.values():
                if e.not_before <= now:
                    return e.not_before  # past already: no need to look at the rest (asked 5×/s)
                if earliest is None or e.not_before < earliest:
                    earliest = e.not_before
            return earliest

    def pending(self, folder: str, path: str) -> bool:
        """The path waits to be handed out: the worker it goes to reads it after every change so far."""
        with self._cond:
            return (folder, path) in self._entries

    def known(self, folder: str, path: str) -> bool:
        """The path is pending or in flight: whatever it holds now will be looked at."""
        with self._cond:
            return (folder, path) in self._entries or (folder, path) in self._in_flight

    def looked_at_since(self, folder: str, path: str, *, since: float) -> bool:
        """The path is pending or in flight, or was handed out at `since` or later: a worker
        looks (or looked) at it after every change before then."""
        with self._cond:
            key = (folder, path)
            return key in self._entries or key in self._in_flight or self._handed_out.get(key, -math.inf) >= since

    def settled(self, folder: str) -> bool:
        """Nothing in flight and nothing pending except paths waiting out a retry backoff."""
        with self._cond:
            if self._flying.get(folder, 0):
                return False
            if not self._pending.get(folder, 0):
                return True
            # Stops at the first path not backing off: costly only while all of them are.
            now = self.clock()
            return all(e.not_before > now for k, e in self._entries.items() if k[0] == folder)

    def oldest_age(self, folder: str) -> float:
        """Seconds since the oldest change still pending in one folder was first seen (0 when none)."""
        with self._cond:
            oldest = min((e.first_seen for k, e in self._entries.items() if k[0] == folder), default=None)
            return 0.0 if oldest is None else max(0.0, self.clock() - oldest)


def _due(e: _Entry, natural: float) -> float:
    """When an entry due by its events at `natural` may be handed out: not before its retry
    backoff, and not after max_delay."""
    return max(e.not_before, min(natural, e.deadline))
