"""Which folders are served: access probes, one target lock per folder, and the refusals.

A folder is served when its source can be read, its target written (both proven by
checks.folder_problem), and its target's lock taken (one daemon per target). The others
are `unusable`, each said once in a `folder_unusable` line naming the path and the cause.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from foldermirror import checks, targetlock
from foldermirror.config import FolderConfig, SshConfig
from foldermirror.errors import FoldermirrorError
from foldermirror.folderstate import FolderState
from foldermirror.paths import Excluder
from foldermirror.pipeline.target_health import path_identity
from foldermirror.targetlock import TargetLock, TargetLocked

UNUSABLE_FIX = "the other folders are served; fix this, then reload (systemctl reload foldermirror, or SIGHUP)"
UNUSABLE_FIX_SYNC = "the other folders are synced; fix this and run sync again"


class Admission:
    """The served folders (`folders`, shared with every part), the unusable ones, the locks."""

    def __init__(self, *, log: Any, instance: str, config_path: str, once: bool) -> None:
        self.log = log
        self.instance = instance
        self.config_path = config_path
        self.once = once
        self.folders: dict[str, FolderState] = {}
        self.unusable: dict[str, FolderConfig] = {}
        self.locks: dict[str, TargetLock] = {}  # one per folder served: its target's lock
        self._locked_out: dict[str, TargetLocked] = {}  # unusable because another process holds the target
        self.lock = threading.RLock()  # guards `folders` and each folder's catch_up
        self.ssh: SshConfig | None = None  # where remote targets' host keys are looked up

    def admit(self, folders: tuple[FolderConfig, ...]) -> list[str]:
        """Serve each folder whose source can be read and target written; log the others."""
        admitted = []
        for f in folders:
            self._locked_out.pop(f.name, None)
            problem, fix = checks.folder_problem(f, self.instance, ssh=self.ssh), self.unusable_fix()
            if problem is None:  # folder_problem made the target: it can hold the lock now
                problem, fix = self.lock_target(f)
            if problem is not None:
                self.refuse(f, problem, fix)
                continue
            self.unusable.pop(f.name, None)
            with self.lock:
                target = checks.target_health(f, self.instance)
                self.folders[f.name] = FolderState(f, Excluder(f.excludes), target,
                                                   root_id=path_identity(str(f.source)), target_id=target.identity())
            admitted.append(f.name)
            checks.note_unkept(self.log, f, self.instance)
        return admitted

    def refuse(self, f: FolderConfig, problem: str, fix: str) -> None:
        self.unusable[f.name] = f
        self.log.error("folder_unusable", folder=f.name, error=problem, fix=fix)

    def lock_target(self, f: FolderConfig) -> tuple[str | None, str]:
        """Hold the lock of the folder's target; (problem, fix) when another process holds it."""
        if f.remote is not None:
            return None, ""  # on another machine: nothing here to lock
        held = self.locks.get(f.name)
        if held is not None:
            if held.target == str(f.target) and held.intact():
                return None, ""  # a reload that kept the target keeps the lock, without a gap
            self.release(f.name)
        try:
            self.locks[f.name] = targetlock.acquire(str(f.target), self.config_path)
        except TargetLocked as exc:
            self._locked_out[f.name] = exc
            then = ("then run sync again; the other folders are synced" if self.once else
                    "then reload (systemctl reload foldermirror, or SIGHUP); the other folders are served")
            holder = f" (pid {exc.pid})" if exc.pid else ""
            return str(exc), f"stop the other foldermirror{holder} or point folder {f.name} at another target, {then}"
        except FoldermirrorError as exc:
            return str(exc), self.unusable_fix()
        return None, ""

    def unusable_fix(self) -> str:
        return UNUSABLE_FIX_SYNC if self.once else UNUSABLE_FIX

    def release(self, name: str) -> None:
        lock = self.locks.pop(name, None)
        if lock is not None:
            lock.release()

    def withdraw(self, name: str, keep_lock: bool = False) -> None:
        """Stop serving a folder; its lock goes too unless a reload serves it again at once."""
        with self.lock:
            self.folders.pop(name, None)
        if not keep_lock:
            self.release(name)

    def reset(self) -> None:
        """Before a reload's admissions: every folder not served is tried again."""
        self.unusable.clear()
        self._locked_out.clear()

    def release_unserved(self) -> None:
        for name in [n for n in self.locks if n not in self.folders]:
            self.release(name)  # a changed folder that kept its target but is now unusable

    def release_all(self) -> None:
        for name in list(self.locks):
            self.release(name)

    def nothing_served(self, names: list[str]) -> str:
        """The start-up error when no folder is left: the holders when every target is locked."""
        if names and all(n in self._locked_out for n in names):
            return "; ".join(str(self._locked_out[n]) for n in names)
        return "no folder can be served (each one is named in a folder_unusable line above)"


class ReloadPlan(NamedTuple):
    """What a reload does to the folders served, by name."""

    removed: tuple[str, ...]
    added: tuple[str, ...]
    changed: tuple[str, ...]
    released: frozenset[str]           # whose target locks go first: removed, or their target changed
    to_admit: tuple[FolderConfig, ...]  # added and changed, in the new file's order

    @property
    def stopped(self) -> tuple[str, ...]:
        return self.removed + self.changed


def reload_plan(served: Mapping[str, FolderConfig], new: tuple[FolderConfig, ...]) -> ReloadPlan:
    fresh = {f.name: f for f in new}
    removed = tuple(n for n in served if n not in fresh)
    added = tuple(n for n in fresh if n not in served)
    changed = tuple(n for n in fresh if n in served and fresh[n] != served[n])
    released = frozenset(removed) | {n for n in changed if fresh[n].target != served[n].target}
    return ReloadPlan(removed, added, changed, released,
                      tuple(f for f in fresh.values() if f.name in added or f.name in changed))
