"""Test-only fault injection, off unless FOLDERMIRROR_FAULTS is set, and never under systemd.

It cannot be switched on in an installed service by accident: when the process runs under
systemd (INVOCATION_ID is set, as systemd does for every unit it starts, and as the rest of the
daemon takes it), FOLDERMIRROR_FAULTS is ignored and `run` and `sync` log one `faults_refused`
error at start, naming the variable's value, unless FOLDERMIRROR_FAULTS_UNDER_SYSTEMD=1 is set
as well (a second, deliberate step, for a test that means it). Whenever a fault is active they
log one `faults_enabled` warning at start with the entries, so a daemon running with faults
says so in its first lines. Tests start the daemon outside systemd and set only
FOLDERMIRROR_FAULTS. The decision depends on the environment alone, so the workers (which
inherit it) make the same one.

FOLDERMIRROR_FAULTS is a comma-separated list of `kind:name` entries:
  handler_error:NAME   the event handler raises for a path whose last part is NAME
                       (inside its guard: the daemon logs and reconciles)
  observer_crash:NAME  the inotify reader thread itself dies on such an event (a bug)
  max_user_watches:N   the daemon believes fs.inotify.max_user_watches is N (the real
                       sysctl is never changed by tests)
  no_hello:on          workers never say hello (as when one dies before its hello is read):
                       the pool must notice a replaced worker without it
  no_replay:on         the intake does not report the entries a new directory already
                       holds (the daemon's comparison must find them by itself)
  slow_copy:NAME       a worker copies such a file 1 MiB at a time, 50 ms apart, so a
                       test can act while the copy is in progress
  vanish:NAME          a remote batch deletes such a file from the source after listing
                       it and before rsync runs (a file vanishing mid-batch)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

VARIABLE = "FOLDERMIRROR_FAULTS"
UNDER_SYSTEMD = "FOLDERMIRROR_FAULTS_UNDER_SYSTEMD"


class InjectedFault(RuntimeError):
    pass


def _parse(raw: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        kind, _, name = entry.partition(":")
        out.setdefault(kind, set()).add(name)
    return out


def refused(environ: Mapping[str, str]) -> bool:
    """Faults are asked for, but this process runs under systemd without the second variable."""
    return (bool(_parse(environ.get(VARIABLE, ""))) and bool(environ.get("INVOCATION_ID"))
            and environ.get(UNDER_SYSTEMD) != "1")


REFUSED = refused(os.environ)
_FAULTS = {} if REFUSED else _parse(os.environ.get(VARIABLE, ""))
ENABLED = bool(_FAULTS)


def announce(log: Any) -> None:
    """At start: one warning naming the active faults, or one error saying they were ignored."""
    raw = os.environ.get(VARIABLE, "")
    if REFUSED:
        log.error("faults_refused", variable=VARIABLE, value=raw,
                  error=f"{VARIABLE} (test-only fault injection) is set for a process systemd started: ignored, "
                        f"no fault is injected",
                  fix=f"remove {VARIABLE} from the unit's environment (Environment= in a drop-in, EnvironmentFile=, "
                      f"systemctl set-environment); a test that means it also sets {UNDER_SYSTEMD}=1")
    elif ENABLED:
        log.warning("faults_enabled", variable=VARIABLE,
                    faults=sorted(f"{kind}:{name}" for kind, names in _FAULTS.items() for name in names),
                    error="test-only fault injection is on: this daemon misbehaves on purpose",
                    fix=f"unset {VARIABLE} unless this is a test")


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
