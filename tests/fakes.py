"""Hand-written fakes for the in-process tests of tests/unit/ (the middle level): a clock, a
logger that records, folder configs and states without a config file. No mocks library:
each fake has only the methods its part calls, and remembers what it was asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foldermirror.config import FolderConfig
from foldermirror.folderstate import FolderState
from foldermirror.paths import Excluder
from foldermirror.pipeline.changes import ChangeQueue, Item
from foldermirror.pipeline.target_health import LocalTargetHealth


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeLog:
    """A structlog-shaped logger: every call is kept as (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def debug(self, event: str, **fields: Any) -> None:
        self.lines.append(("debug", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event, fields))

    def of(self, event: str, level: str | None = None) -> list[dict[str, Any]]:
        """The fields of every `event` line (at `level`, if given), in order."""
        return [fields for lvl, name, fields in self.lines if name == event and level in (None, lvl)]

    def events(self, level: str | None = None) -> list[str]:
        return [name for lvl, name, _ in self.lines if level in (None, lvl)]


class Calls:
    """A callback that records its arguments (e.g. request_walk, root_suspect, wake)."""

    def __init__(self, result: Any = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result = result

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.result

    @property
    def count(self) -> int:
        return len(self.calls)


def folder(name: str = "data", root: Path | None = None, **settings: Any) -> FolderConfig:
    """A FolderConfig with the defaults a config file gives (source and target under `root`)."""
    base = root if root is not None else Path("/nonexistent")
    return FolderConfig(name=name, source=base / f"{name}-src", target=base / f"{name}-dst", **settings)


def state(config: FolderConfig, **fields: Any) -> FolderState:
    return FolderState(config, Excluder(config.excludes), LocalTargetHealth(str(config.target), "test"), **fields)


def in_flight(changes: ChangeQueue, name: str, *paths: str, settle: float = 0.25) -> list[Item]:
    """Hand `paths` of folder `name` out of the queue, as the dispatcher does: they are in flight."""
    for p in paths:
        changes.touch(name, p, settle=settle, ready=True)
    items = changes.take(len(paths) or 1, timeout=0)
    assert sorted(i.path for i in items) == sorted(paths), items
    return items
