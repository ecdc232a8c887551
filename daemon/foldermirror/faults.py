"""Test-only fault injection, off unless FOLDERMIRROR_FAULTS is set.

FOLDERMIRROR_FAULTS is a comma-separated list of `kind:name` entries:
  handler_error:NAME   the event handler raises for a path whose last part is NAME
                       (inside its guard: the daemon logs and reconciles)
  observer_crash:NAME  the observer thread itself dies on such an event (a watchdog bug)
  max_user_watches:N   the daemon believes fs.inotify.max_user_watches is N (the real
                       sysctl is never changed by tests)
  no_hello:on          workers never say hello (as when one dies before its hello is read):
                       the pool must notice a replaced worker without it
  no_replay:on         watchdog does not replay the entries a new directory already
                       holds as events (the daemon must find them by itself)
  slow_copy:NAME       a worker copies such a file 1 MiB at a time, 50 ms apart, so a
                       test can act while the copy is in progress
  vanish:NAME          a remote batch deletes such a file from the source after listing
                       it and before rsync runs (a file vanishing mid-batch)
"""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    pass


def _parse(raw: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        kind, _, name = entry.partition(":")
        out.setdefault(kind, set()).add(name)
    return out


_FAULTS = _parse(os.environ.get("FOLDERMIRROR_FAULTS", ""))
ENABLED = bool(_FAULTS)


def trip(kind: str, path: str) -> None:
    """Raise InjectedFault when fault `kind` is configured for this path's last part."""
    names = _FAULTS.get(kind)
    if names and os.path.basename(path) in names:
        raise InjectedFault(f"injected {kind} for {path}")


def value(kind: str) -> str | None:
    """The name given for a `kind:name` entry that carries a value, or None."""
    names = _FAULTS.get(kind)
    return min(names) if names else None


SLOW_COPY_PAUSE = 0.05


def delay(kind: str, path: str) -> float:
    """Seconds to pause per step when fault `kind` (slow_copy) is configured for this path."""
    names = _FAULTS.get(kind)
    return SLOW_COPY_PAUSE if names and os.path.basename(path) in names else 0.0
